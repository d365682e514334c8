"""What an operator runs: the CLI, replay, backfill and tail."""
