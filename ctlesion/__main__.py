"""`python -m ctlesion` runs the command line."""

from ctlesion.cli.app import main

main()
