"""The CLI's command groups; `tokenrelay/cli.py` puts them together."""
