"""`python -m blocklist` is `blocklist`."""

from blocklist.cli import main

main(prog_name="blocklist")
