# Copyright (c) mmconv contributors. All rights reserved.
"""The rename engine: apply an ordered rule table to a state dict.

Pure functions, no file I/O and no knowledge of any format: the tables
live in :mod:`mmconv.formats`, the order of the steps in
:mod:`mmconv.pipeline`.

Invariants (detectron2's collision asserts): every source tensor is kept
(possibly renamed), merged as an alias of an identical tensor kept under the
same name, or listed as dropped with its reason; two different tensors never
end up under one name.
"""
import re
from dataclasses import replace
from functools import lru_cache
from typing import Dict, Mapping, Optional, Pattern, Tuple, Union

import torch

from .errors import KeyCollisionError
from .report import ConversionReport, KeyRecord
from .spec import Rule

__all__ = ['rename_key', 'apply_rules', 'chain_rules', 'same_tensor',
           'check_shapes']

_CompiledRule = Tuple[Pattern, Optional[str], str]


@lru_cache(maxsize=None)
def _compiled(rules: Tuple[Rule, ...]) -> Tuple[_CompiledRule, ...]:
    """Compiled ``rules``."""
    return tuple((re.compile(p), r, why) for p, r, why in rules)


def rename_key(key: str, rules: Union[str, Tuple[Rule, ...]],
               layout: str = 'source') -> Tuple[Optional[str], str]:
    """Apply the first matching rule of ``rules`` to one key.

    Args:
        key (str): Source key.
        rules (str | tuple[Rule]): Ordered ``(regex, replacement, reason)``,
            or the name of a registered format (its ``rules``).
        layout (str): Name of the layout, for the reason of unmatched keys.

    Returns:
        tuple: ``(new key or None if dropped, reason)``.

    Example:
        >>> rename_key('module.encoder_q.layer1.0.conv1.weight',
        ...            ((r'^module\\.encoder_q\\.', '', 'backbone'), ))
        ('layer1.0.conv1.weight', 'backbone')
    """
    if isinstance(rules, str):
        from .formats import get_format
        layout, rules = rules, get_format(rules).rules
    for pattern, replacement, reason in _compiled(rules):
        if pattern.search(key):
            if replacement is None:
                return None, reason
            return pattern.sub(replacement, key, count=1), reason
    return None, f'outside the {layout} layout'


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors are one tensor saved under two names."""
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.data_ptr() == b.data_ptr() and a.stride() == b.stride():
        return True
    return bool(torch.equal(a, b))


def apply_rules(state_dict: Mapping[str, torch.Tensor],
                rules: Tuple[Rule, ...], report: ConversionReport,
                layout: str = 'source') -> Dict[str, torch.Tensor]:
    """Rename ``state_dict`` with ``rules``, recording every key's fate.

    Args:
        state_dict (dict): Source tensors.
        rules (tuple[Rule]): Ordered rules.
        report (ConversionReport): Receives kept/aliased/dropped records.
        layout (str): Layout name for unmatched keys' reason.

    Returns:
        dict: Output tensors (the source tensor objects, never copies).

    Raises:
        KeyCollisionError: If two different tensors map to one key.
    """
    out: Dict[str, torch.Tensor] = {}
    source_of: Dict[str, str] = {}
    for old, tensor in state_dict.items():
        new, reason = rename_key(old, rules, layout)
        shape = tuple(tensor.shape)
        if new is None:
            report.dropped.append(KeyRecord(old, None, reason, shape))
        elif new in out:
            if not same_tensor(out[new], tensor):
                raise KeyCollisionError(
                    f'{source_of[new]!r} and {old!r} both become {new!r} '
                    f'under the {layout} rules but hold different values; '
                    f'the checkpoint is not a plain {layout} layout — check '
                    'the format')
            report.aliases.append(KeyRecord(old, new, reason, shape))
        else:
            out[new] = tensor
            source_of[new] = old
            report.kept.append(KeyRecord(old, new, reason, shape))
    return out


def chain_rules(state_dict: Dict[str, torch.Tensor],
                rules: Tuple[Rule, ...], report: ConversionReport,
                layout: str) -> Dict[str, torch.Tensor]:
    """Rename an already converted ``state_dict`` again with ``rules``.

    The report keeps the original source keys: a kept record ``a -> b``
    followed by ``b -> c`` becomes ``a -> c`` (reason of the first step);
    keys the second table drops are dropped with its reason.

    Args:
        state_dict (dict): Output of an earlier step (keys = ``report``'s
            kept ``new`` names).
        rules (tuple[Rule]): The second table.
        report (ConversionReport): Updated in place.
        layout (str): Layout name for unmatched keys' reason.

    Returns:
        dict: The renamed tensors.
    """
    second = ConversionReport(report.format, report.title)
    out = apply_rules(state_dict, rules, second, layout)
    origin = {r.new: r for r in report.kept}
    mapped = {r.old: r.new for r in second.kept}
    report.dropped += [KeyRecord(origin[r.old].old, None, r.reason, r.shape)
                       for r in second.dropped if r.old in origin]
    report.dropped += [replace(r, new=None) for r in report.aliases
                       if r.new not in mapped]
    report.aliases = [replace(r, new=mapped[r.new]) for r in report.aliases
                      if r.new in mapped]
    # tensors surgery added (no source key, e.g. FrozenBN statistics) are
    # renamed with the rest but are not source records
    report.kept = [KeyRecord(origin[r.old].old, r.new, origin[r.old].reason,
                             r.shape) for r in second.kept
                   if r.old in origin]
    return out


def check_shapes(state_dict: Mapping[str, torch.Tensor],
                 expected: Mapping[str, Tuple[int, ...]], what: str) -> None:
    """Refuse a state dict that is not exactly ``expected``.

    Args:
        state_dict (Mapping): Converted tensors.
        expected (Mapping): Every key the architecture has, with its shape.
        what (str): The architecture, for the message (``'ViT
            (embed_dim=384, depth=12)'``).

    Raises:
        ConversionError: One line naming up to four missing, unexpected and
            mis-shaped tensors each (and how many more).
    """
    from .errors import ConversionError
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f'{k} {list(state_dict[k].shape)} (expected {list(s)})'
             for k, s in expected.items()
             if k in state_dict and tuple(state_dict[k].shape) != tuple(s)]
    if missing or unexpected or wrong:
        parts = [f'{name}: {", ".join(items[:4])}' + (
            f' (+{len(items) - 4})' if len(items) > 4 else '')
            for name, items in (('missing', missing),
                                ('unexpected', unexpected),
                                ('mis-shaped', wrong)) if items]
        raise ConversionError(f'not a consistent {what}: ' +
                              '; '.join(parts))
