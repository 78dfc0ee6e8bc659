"""User-facing error types.

Every error a user can cause by what they pass in (a missing file, a scan that is not CT, an existing output
without ``--overwrite``) is a :class:`CovidsegError`. The command line prints its message as one line and exits
with code 2; library users catch it like any exception. Messages say what was wrong and what to do.
"""

from __future__ import annotations


class CovidsegError(Exception):
    """Base class of errors caused by user input; the CLI shows the message without a traceback."""


class InputError(CovidsegError):
    """An input path or file cannot be used (missing, unreadable, wrong shape, unsupported format)."""


class NotHUError(InputError):
    """The intensities do not look like Hounsfield units, or the scan is not a CT."""


class OutputExistsError(CovidsegError):
    """An output already exists and ``overwrite`` was not requested."""


class ConfigError(CovidsegError):
    """A configuration key or value is invalid."""
