"""Run the CLI as `python -m specai`."""

from specai.cli import main

main()
