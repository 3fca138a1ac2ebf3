"""tokenrelay: a production streaming gateway for Claude."""

__version__ = "0.1.0"
