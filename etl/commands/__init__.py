"""One module per CLI command: `HELP`, `EXAMPLES`, `configure(parser)`, `run(args) -> int`."""
