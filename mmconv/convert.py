# Copyright (c) mmconv contributors. All rights reserved.
"""The conversion core: pure functions, no file I/O.

>>> result = convert_checkpoint(torch.load(path), 'auto')   # doctest: +SKIP
>>> result.state_dict, result.report.summary()              # doctest: +SKIP
"""
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, Optional, Pattern, Tuple, Union

import torch

from .arch import check_resnet
from .detect import detect_format
from .errors import ConversionError, KeyCollisionError
from .formats import Format, get_format
from .report import ConversionReport, KeyRecord
from .containers import Unwrapped, unwrap

__all__ = ['convert_state_dict', 'convert_checkpoint', 'ConversionResult',
           'rename_key']

_CompiledRule = Tuple[Pattern, Optional[str], str]


@dataclass
class ConversionResult:
    """Converted weights and what happened to every source key.

    Attributes:
        state_dict (dict): Output tensors (the source tensors themselves,
            never copies), keyed by MMDetection names.
        report (ConversionReport): The report.
    """

    state_dict: Dict[str, torch.Tensor]
    report: ConversionReport


@lru_cache(maxsize=None)
def _compiled(fmt: Format) -> Tuple[_CompiledRule, ...]:
    """Compiled rules of ``fmt``."""
    return tuple((re.compile(p), r, why) for p, r, why in fmt.rules)


def rename_key(key: str, fmt: Union[str, Format]) -> Tuple[Optional[str], str]:
    """Apply ``fmt``'s rules to one key.

    Args:
        key (str): Source key.
        fmt (str | Format): Source format.

    Returns:
        tuple: ``(new key or None if dropped, reason)``.

    Example:
        >>> rename_key('module.encoder_q.layer1.0.conv1.weight', 'moco')
        ('layer1.0.conv1.weight', 'query encoder = backbone')
    """
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    for pattern, replacement, reason in _compiled(fmt):
        if pattern.search(key):
            if replacement is None:
                return None, reason
            return pattern.sub(replacement, key, count=1), reason
    return None, f'outside the {fmt.name} backbone layout'


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors are one tensor saved under two names."""
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.data_ptr() == b.data_ptr() and a.stride() == b.stride():
        return True
    return bool(torch.equal(a, b))


def convert_state_dict(state_dict: Dict[str, torch.Tensor],
                       fmt: Union[str, Format]) -> ConversionResult:
    """Rename a source state dict into MMDetection backbone names.

    Invariants: every source tensor is either kept (possibly renamed), merged
    as an alias of an identical tensor kept under the same name, or listed as
    dropped with its reason; two different tensors never end up under one
    name; the result is never empty.

    Args:
        state_dict (dict): Source tensors (already unwrapped).
        fmt (str | Format): Source format.

    Returns:
        ConversionResult: Output state dict (same tensor objects) and report.

    Raises:
        KeyCollisionError: If two different tensors map to one key.
        ConversionError: If no tensor is kept.
    """
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    report = ConversionReport(fmt.name, fmt.title)
    out: Dict[str, torch.Tensor] = {}
    source_of: Dict[str, str] = {}
    for old, tensor in state_dict.items():
        new, reason = rename_key(old, fmt)
        shape = tuple(tensor.shape)
        if new is None:
            report.dropped.append(KeyRecord(old, None, reason, shape))
        elif new in out:
            if not _same_tensor(out[new], tensor):
                raise KeyCollisionError(
                    f'{source_of[new]!r} and {old!r} both become {new!r} '
                    f'under the {fmt.name} rules but hold different values; '
                    'the checkpoint is not a plain '
                    f'{fmt.title} layout — check the format')
            report.aliases.append(KeyRecord(old, new, reason, shape))
        else:
            out[new] = tensor
            source_of[new] = old
            report.kept.append(KeyRecord(old, new, reason, shape))
    if not out:
        first = ', '.join(repr(k) for k in list(state_dict)[:3])
        raise ConversionError(
            f'no backbone tensor matches the {fmt.name} rules '
            f'({len(state_dict)} keys, first: {first})')
    report.backbone = check_resnet(out)
    return ConversionResult(out, report)


def convert_checkpoint(checkpoint: Any, fmt: str = 'auto',
                       select: Optional[str] = None,
                       prefix: Optional[str] = None) -> ConversionResult:
    """Unwrap, detect (if ``fmt='auto'``) and convert a loaded checkpoint.

    Args:
        checkpoint: What ``torch.load`` returned for the source file.
        fmt (str): A format name or ``'auto'``. Defaults to ``'auto'``.
        select (str, optional): ``'teacher'`` (default) or ``'student'`` for
            checkpoints holding both networks (DINO).
        prefix (str, optional): Convert only the keys starting with
            ``prefix``, stripped of it first (as MMEngine's ``Pretrained``
            ``prefix``), e.g. ``'backbone.'`` for a whole-detector file.

    Returns:
        ConversionResult: Output state dict and report.

    Raises:
        UnknownFormatError: ``'auto'`` and no format matches.
        ConversionError: The given format does not fit the checkpoint; the
            message names the format that was detected instead.
    """
    unwrapped = unwrap(checkpoint, select)
    if prefix:
        unwrapped = _take_prefix(unwrapped, prefix)
        checkpoint = unwrapped.state_dict
    if fmt == 'auto':
        detection = detect_format(checkpoint, select, unwrapped)
        fmt, how = detection.name, f'detected: {detection.reason}'
    else:
        get_format(fmt)
        how = 'given'
    try:
        result = convert_state_dict(unwrapped.state_dict, fmt)
    except ConversionError as err:
        if how != 'given':
            raise
        raise ConversionError(f'{err}; {_hint(checkpoint, select, unwrapped)}'
                              ) from None
    result.report.detection = how
    result.report.where = unwrapped.where
    result.report.ignored_entries = list(unwrapped.ignored)
    return result


def _take_prefix(unwrapped: Unwrapped, prefix: str) -> Unwrapped:
    """Keep the keys under ``prefix``, stripped; the rest are ignored."""
    sd = unwrapped.state_dict
    taken = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not taken:
        raise ConversionError(
            f'no key starts with prefix {prefix!r} (first keys: '
            + ', '.join(repr(k) for k in list(sd)[:3]) + '); fix prefix=')
    others = len(sd) - len(taken)
    ignored = unwrapped.ignored + (
        [f'{others} keys outside prefix {prefix!r}'] if others else [])
    return Unwrapped(taken, unwrapped.path + [f'{prefix}*'], ignored)


def _hint(checkpoint: Any, select: Optional[str], unwrapped) -> str:
    """Which format auto-detection sees, to suggest as the fix."""
    try:
        detected = detect_format(checkpoint, select, unwrapped)
    except ConversionError:
        return 'auto-detection does not recognise it either'
    return (f'the file looks like {detected.name!r} ({detected.reason}): '
            f"use --selfsup {detected.name} / method='{detected.name}'")
