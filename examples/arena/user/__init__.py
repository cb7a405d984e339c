"""The user package: players, their unique handles, and who follows whom.

It knows nothing of the packages that build on it: they consume its messages and call
its operations.
"""
