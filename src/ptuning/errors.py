"""Errors a user can act on: the CLI prints their message without a traceback."""


class PtuningError(ValueError):
    """Base for every error caused by the user's input (files, checkpoints, models, options)."""


class DataError(PtuningError):
    """A data file is malformed: the message names the file and the line or record."""


class CheckpointError(PtuningError):
    """A checkpoint is missing, malformed, or does not fit the backbone it is loaded onto."""


class UnsupportedModelError(PtuningError):
    """The backbone's architecture cannot receive prompts; we refuse rather than silently ignore them."""
