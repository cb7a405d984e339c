"""Chirp's benchmark suite: `python -m bench [--quick] [--only NAME]`.

This package imports nothing at the top level, so the scripts under `bench/peers/`
(run by the peers' own virtual environment, which has no Chirp) can live beside it.
"""
