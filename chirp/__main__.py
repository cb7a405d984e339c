"""`python -m chirp`: the same as the `chirp` command."""

from chirp._cli import main

main()
