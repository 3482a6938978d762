"""graftkit's exceptions: each message says what is wrong, where, and what to do.

The CLI prints a :class:`GraftError` as one line and exits with code 2.
"""
from __future__ import annotations


class GraftError(Exception):
    """Base of every error graftkit raises on purpose (bad input, bad config, bad file)."""

    exit_code = 2


class ConfigError(GraftError, ValueError):
    """A setting or a combination of settings is invalid."""


class DataError(GraftError, ValueError):
    """The data folder is missing, malformed, or holds images that cannot be used."""


class CheckpointError(GraftError, ValueError):
    """A model or weights file is missing, unsafe, or does not match."""
