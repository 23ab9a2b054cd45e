"""Project exceptions. Each carries a message a user can act on.

Exit codes of the CLI follow the class: ``InputError`` and ``ConfigError`` exit 2
(bad input, nothing was written), any other ``HardnegError`` exits 1. Both are also ``ValueError``s,
the exception ``sentence_transformers.util.mine_hard_negatives`` raises for bad arguments, so code
written for it catches them from ``hardneg.mine_hard_negatives`` too.
"""


class HardnegError(Exception):
    """Base class of hardneg's errors."""

    exit_code = 1


class ConfigError(HardnegError, ValueError):
    """A config key or value is wrong; the message names the key's path."""

    exit_code = 2


class InputError(HardnegError, ValueError):
    """Input data is wrong; the message names the file, row and column."""

    exit_code = 2


class StorageError(HardnegError):
    """A path cannot be read or written, or a commit would overwrite committed data."""
