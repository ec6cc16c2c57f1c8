"""gendiv's user errors: one base class for every mistake in what a user asked for (a config value, a file, a
folder another run owns), as opposed to a bug in gendiv.

The command line prints a ``UserError`` as one line and exits with code 2; any other exception is a bug and shows
its traceback (exit 1). ``UserError`` subclasses ``ValueError`` so that ``except ValueError`` in user code keeps
working.
"""
from __future__ import annotations


class UserError(ValueError):
    """Something the user asked for cannot be done; the message says what and how to fix it."""


class InputError(UserError):
    """A file, folder or array given as input is missing, unreadable or holds values outside its declared range."""


class OutputExistsError(UserError):
    """An output would replace something the user wrote; nothing is replaced without ``--overwrite``."""


class RunLockedError(UserError):
    """Another live process owns the run folder (it holds the folder's lock)."""


class ResourceError(UserError):
    """A size that cannot be allocated on this machine, refused (with the estimate) before the allocation."""
