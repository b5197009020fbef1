"""``python -m jungle`` runs the command line."""

from jungle.cli import main

main()
