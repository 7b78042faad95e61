# Copyright (c) mmconv contributors. All rights reserved.
"""Name a state dict's source format: one ranking over the whole registry
(:func:`detect_format`; the formats are read from :data:`mmconv.spec.FORMATS`).
"""
import re
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple, Union

from .errors import AmbiguousFormatError, UnknownFormatError
from .spec import FORMATS

__all__ = ['Detection', 'detect_format', 'candidates']


@dataclass(frozen=True)
class Detection:
    """The outcome of format detection.

    Attributes:
        name (str): Format name (a key of :data:`mmconv.spec.FORMATS`).
        reason (str): Which sentinel keys matched.
        rank (int): Number of sentinels matched.
    """

    name: str
    reason: str
    rank: int = 0


def _in(family: str, families: Union[None, str, Sequence[str]]) -> bool:
    """Whether ``family`` is one of ``families`` (None/empty: any)."""
    if not families:
        return True
    return family == families if isinstance(families, str) \
        else family in families


def candidates(keys: Sequence[str],
               family: Union[None, str, Sequence[str]] = None
               ) -> List[Detection]:
    """Every registered format whose sentinels all match, best first.

    Args:
        keys: Keys of the unwrapped state dict.
        family (str | sequence, optional): Consider only this family's (or
            these families') formats.

    Returns:
        list[Detection]: Matching formats, highest rank first (stable in
        registration order).
    """
    found: List[Tuple[int, Detection]] = []
    for fmt in FORMATS.values():
        if not fmt.sentinels or not _in(fmt.family, family):
            continue
        hits = []
        for sentinel in fmt.sentinels:
            pattern = re.compile(sentinel)
            hit = next((k for k in keys if pattern.search(k)), None)
            if hit is None:
                break
            hits.append(hit)
        else:
            found.append((len(hits), Detection(
                fmt.name, f'{fmt.title}: found ' +
                ', '.join(repr(h) for h in hits), len(hits))))
    found.sort(key=lambda item: -item[0])
    return [d for _, d in found]


def detect_format(keys: Iterable[str],
                  family: Union[None, str, Sequence[str]] = None
                  ) -> Detection:
    """Detect the format of a state dict from its keys.

    A format matches when each of its sentinel regexes matches a key; the
    match with the most sentinels wins (``torchvision``'s ``fc.weight`` +
    ``conv1.weight`` beats ``mmdet``'s ``conv1.weight``); a tie is an error
    naming both, never a choice by declaration order.

    Args:
        keys: Keys of the unwrapped state dict.
        family (str | sequence, optional): Consider only this family's (or
            these families') formats.

    Returns:
        Detection: The best-ranked matching format and why.

    Raises:
        UnknownFormatError: No format matches; lists the supported formats
            and the first keys seen.
        AmbiguousFormatError: Two formats match with the same rank.

    Example:
        >>> import torch
        >>> detect_format(['module.encoder_q.conv1.weight']).name
        'moco'
    """
    keys = list(keys)
    found = candidates(keys, family)
    if not found:
        raise UnknownFormatError(
            'unknown checkpoint layout (first keys: ' +
            ', '.join(repr(k) for k in keys[:5]) +
            '); supported formats: ' +
            ', '.join(f.name for f in FORMATS.values()
                      if _in(f.family, family)) +
            ' — pass one explicitly if yours is a variant of them')
    best = [d for d in found if d.rank == found[0].rank]
    if len(best) > 1:
        raise AmbiguousFormatError(
            'the checkpoint matches several formats equally: ' +
            '; '.join(f'{d.name} ({d.reason})' for d in best) +
            ' — pass the right one with --from / method=')
    return found[0]
