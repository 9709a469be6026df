"""CLI subcommand groups of `python -m devserver_lora.train`; each module has `register(subparsers)`."""
