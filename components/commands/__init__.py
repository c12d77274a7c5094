"""CLI command modules; each has ``register(groups)`` adding its commands to the groups of cli.py."""
