# Copyright (c) mmconv contributors. All rights reserved.
"""Errors users can act on, each with its own process exit code.

Every expected failure raises a subclass of :class:`MMConvError` whose
message is one line naming the file and the fix; the command line prints it
without a traceback and exits with :attr:`MMConvError.exit_code`.

==========  ===============================================================
exit code   meaning
==========  ===============================================================
2           bad command-line usage (argparse, or options that do not
            apply to the source, e.g. ``--to detectron2`` for a DETR)
3           input problem: missing file, directory, truncated/corrupt file,
            not a checkpoint, no tensors inside
4           unsafe input refused: the file would import/run code that is not
            on the allowlist (opt in with ``--unsafe-load``)
5           conversion problem: unknown layout, wrong ``--selfsup`` method,
            empty result, key collision
6           output problem: destination exists (use ``--force``), is the
            source, is unwritable, or the disk is full
==========  ===============================================================
"""

__all__ = [
    'MMConvError', 'InputError', 'UnsafeCheckpointError', 'ConversionError',
    'UnknownFormatError', 'KeyCollisionError', 'OutputError', 'UsageError'
]


class MMConvError(Exception):
    """Base class of all expected mmconv errors."""

    exit_code = 1


class UsageError(MMConvError):
    """Options that do not go together (checked after argparse)."""

    exit_code = 2


class InputError(MMConvError):
    """The source file is missing, unreadable, corrupt or not a checkpoint."""

    exit_code = 3


class UnsafeCheckpointError(MMConvError):
    """The source would run code that is not on the loader's allowlist."""

    exit_code = 4


class ConversionError(MMConvError):
    """The state dict cannot be converted as asked."""

    exit_code = 5


class UnknownFormatError(ConversionError):
    """No supported format matches the checkpoint's keys."""


class KeyCollisionError(ConversionError):
    """Two different source tensors would be written under one name."""


class OutputError(MMConvError):
    """The destination cannot (or must not) be written."""

    exit_code = 6
