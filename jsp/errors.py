"""Errors a user can cause (bad data, bad config). The CLI prints them without a traceback."""


class JSPError(Exception):
    """A problem the user can fix; its message says what was expected and where."""


class DatasetError(JSPError):
    """A dataset folder or file is missing, incomplete or unreadable."""


class ConfigError(JSPError):
    """A configuration value is invalid."""
