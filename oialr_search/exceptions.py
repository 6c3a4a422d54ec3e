"""Exception hierarchy of oialr-search.

Every error a user can fix derives from :class:`OIALRSearchError` and is reported by the CLI as one
line with exit code 2; anything else is an internal failure (exit code 1).
"""

from __future__ import annotations


class OIALRSearchError(Exception):
    """Base class of all errors raised for bad user input."""


class ConfigError(OIALRSearchError, ValueError):
    """A run config (or an override) has an unknown key or an invalid value.

    The message starts with the dotted key, e.g. ``oialr.beta: must be in [0, 1), got 1.5``.
    """


class DataError(OIALRSearchError):
    """A data set cannot be found or read in the expected format."""


class CheckpointError(OIALRSearchError):
    """A training checkpoint is missing, unreadable or belongs to another config."""


class WeightsError(OIALRSearchError):
    """A trial's weights file is missing, unreadable, not a weights file, or does not fit the config's model
    (see :func:`oialr_search.load_model`)."""
