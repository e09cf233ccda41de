"""Subcommands of the `bitsmith` CLI, one module each (see core/cli.py)."""
