"""Project exceptions. Each carries a message a user can act on.

Exit codes of the CLI follow the class: ``InputError`` and ``ConfigError`` exit 2
(bad input, nothing was written), any other ``HardnegError`` exits 1.
"""


class HardnegError(Exception):
    """Base class of hardneg's errors."""

    exit_code = 1


class ConfigError(HardnegError):
    """A config key or value is wrong; the message names the key's path."""

    exit_code = 2


class InputError(HardnegError):
    """Input data is wrong; the message names the file, row and column."""

    exit_code = 2


class StorageError(HardnegError):
    """A path cannot be read or written, or a commit would overwrite committed data."""
