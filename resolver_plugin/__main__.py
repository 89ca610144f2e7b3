"""`python -m resolver_plugin` is `blocklist-plugin`."""

from resolver_plugin.cli import main

main(prog_name="blocklist-plugin")
