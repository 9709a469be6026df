"""CLI subcommand groups of `devserver-lora`; each module has `register(subparsers)`."""
