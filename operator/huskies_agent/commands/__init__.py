"""Subcommands of the huskies-agent CLI (one module each)."""
