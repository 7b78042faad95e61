# Copyright (c) mmconv contributors. All rights reserved.
"""Name a checkpoint's source format from sentinel keys."""
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from .errors import UnknownFormatError
from .formats import FORMATS, format_names
from .containers import SELECTABLE, Unwrapped, unwrap

__all__ = ['detect_format', 'detect_state_dict_format', 'Detection']


@dataclass(frozen=True)
class Detection:
    """The outcome of format detection.

    Attributes:
        name (str): Format name (a key of :data:`mmconv.formats.FORMATS`).
        reason (str): Short explanation: which sentinel keys matched.
    """

    name: str
    reason: str


def detect_state_dict_format(keys: Iterable[str],
                             top_level: Iterable[str] = ()) -> Detection:
    """Detect the format from state-dict keys.

    Formats are tried in :data:`~mmconv.formats.FORMATS` order; a format
    matches when each of its sentinel regexes matches at least one key.

    Args:
        keys: Keys of the unwrapped state dict.
        top_level: Entries of the checkpoint itself (``teacher``/``student``
            identify DINO-style checkpoints).

    Returns:
        Detection: The first matching format and why.

    Raises:
        UnknownFormatError: If no format matches; lists the supported formats
            and the first keys seen.
    """
    keys = list(keys)
    top_level = list(top_level)
    if any(k in top_level for k in SELECTABLE):
        return Detection('dino', 'teacher/student entries at the top level '
                         '(DINO full checkpoint)')
    for fmt in FORMATS.values():
        hits = []
        for sentinel in fmt.sentinels:
            pattern = re.compile(sentinel)
            hit = next((k for k in keys if pattern.search(k)), None)
            if hit is None:
                break
            hits.append(hit)
        else:
            if hits:
                return Detection(
                    fmt.name, f'{fmt.title}: found ' +
                    ', '.join(repr(h) for h in hits))
    raise UnknownFormatError(
        'unknown checkpoint layout (first keys: ' +
        ', '.join(repr(k) for k in keys[:5]) +
        f'); supported formats: {", ".join(format_names())} — pass one '
        'explicitly if yours is a variant of them')


def detect_format(checkpoint: Any, select: Optional[str] = None,
                  unwrapped: Optional[Unwrapped] = None) -> Detection:
    """Detect the source format of a loaded checkpoint.

    Args:
        checkpoint: What ``torch.load`` returned.
        select (str, optional): ``'teacher'``/``'student'`` (DINO).
        unwrapped (Unwrapped, optional): ``unwrap(checkpoint)`` if the caller
            already has it.

    Returns:
        Detection: Format name and explanation.

    Example:
        >>> import torch
        >>> detect_format({'state_dict': {
        ...     'module.encoder_q.conv1.weight': torch.zeros(1)}}).name
        'moco'
    """
    unwrapped = unwrapped or unwrap(checkpoint, select)
    top = list(checkpoint) if isinstance(checkpoint, Mapping) else []
    return detect_state_dict_format(unwrapped.state_dict, top)
