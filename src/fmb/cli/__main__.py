"""`python -m fmb.cli`: the same entry point as the `fmb` script."""
from fmb.cli import main

main()
