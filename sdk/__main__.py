"""`python -m sdk` runs the `forklane` CLI (the same as the installed `forklane` script)."""

from forklane.cli import main

main()
