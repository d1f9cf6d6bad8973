"""`python -m sdk` runs the `forklane` CLI (the same as the installed `forklane` script)."""

from sdk.cli import main

main()
