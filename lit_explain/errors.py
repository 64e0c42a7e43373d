"""Exceptions shared by every layer, so the CLI can report user mistakes without a traceback."""


class LitExplainError(Exception):
    """Base class for errors caused by user input (a config value, a file, a checkpoint)."""


class ConfigError(LitExplainError, ValueError):
    """A setting is invalid; the message names the setting and the valid choices."""


class DataError(LitExplainError, ValueError):
    """A dataset, file or split does not look as expected; the message names the file or split."""
