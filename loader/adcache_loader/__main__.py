"""`python -m adcache_loader ...` is the `adcache` command."""

from adcache_loader.cli import main

main(prog_name="adcache")
