"""Shared fixtures: the Chirp pytest plugin with its session-wide servers."""

pytest_plugins = ["chirp.testing"]
