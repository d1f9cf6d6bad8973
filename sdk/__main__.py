"""`python -m forklane` runs the `forklane` command line (the same as the installed script)."""

from forklane._entry import main

main()
