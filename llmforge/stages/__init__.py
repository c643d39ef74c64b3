"""One module per subcommand. Each exposes `Config` (typed settings), `run(...)` and `command` (the CLI)."""
