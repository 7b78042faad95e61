# Copyright (c) mmconv contributors. All rights reserved.
"""Errors users can act on, each with its own process exit code.

Every expected failure raises a subclass of :class:`MMConvError` whose
message is one line naming the file and the fix; the command line prints it
without a traceback and exits with :attr:`MMConvError.exit_code`.

==========  ===============================================================
exit code   meaning
==========  ===============================================================
2           bad command-line usage (argparse, or options that do not
            apply to the source or target, e.g. ``--to detectron2`` for a
            DETR, ``--keep-fc`` for MMDetection output, a detectron2
            output not named ``*.pkl``)
3           input problem: missing file, directory, truncated/corrupt file,
            not a checkpoint, no tensors inside
4           unsafe input refused: the file would import/run code that is not
            on the allowlist (opt in with ``--unsafe-load``)
5           conversion problem: unknown or ambiguous layout, wrong
            ``--from``/``--selfsup``/``method=``, empty result, key
            collision, tensors outside a whole-detector layout
6           output problem: destination exists or appeared while
            converting (use ``--force``), is the source, a directory or not
            a regular file (even with ``--force``), its name is too long,
            its directory is missing, unwritable or read-only, or the disk
            is full
7           ``mmconv check``: a module configured to load pretrained
            weights still holds its random initialisation
==========  ===============================================================
"""

__all__ = [
    'MMConvError', 'InputError', 'UnsafeCheckpointError', 'ConversionError',
    'UnknownFormatError', 'AmbiguousFormatError', 'KeyCollisionError',
    'OutputError', 'UsageError', 'CheckFailedError'
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


class AmbiguousFormatError(UnknownFormatError):
    """Several formats match the checkpoint's keys equally well."""


class KeyCollisionError(ConversionError):
    """Two different source tensors would be written under one name."""


class OutputError(MMConvError):
    """The destination cannot (or must not) be written."""

    exit_code = 6


class CheckFailedError(MMConvError):
    """``mmconv check`` found a pretrained module left at random init."""

    exit_code = 7
