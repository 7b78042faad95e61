# Copyright (c) mmconv contributors. All rights reserved.
"""The rename engine: apply an ordered rule table to a state dict.

Pure functions, no file I/O and no knowledge of any format: the tables
live in :mod:`mmconv.formats` (read from the registry in
:mod:`mmconv.spec`), the order of the steps in :mod:`mmconv.pipeline`.

Invariants (detectron2's collision asserts): every source tensor is kept
(possibly renamed), merged as an alias of an identical tensor kept under the
same name, or listed as dropped with its reason; two different tensors never
end up under one name.
"""
import re
from dataclasses import replace
from functools import lru_cache
from typing import Any, Dict, List, Mapping, Optional, Pattern, Tuple, Union

import torch

from .errors import KeyCollisionError
from .report import ConversionReport, KeyRecord
from .ops import OpContext
from .spec import Rule, TensorChange, check_shapes, get_format

__all__ = ['rename_key', 'apply_rules', 'chain_rules', 'same_tensor',
           'check_shapes', 'refit', 'derive']

_CompiledRule = Tuple[Pattern, Rule]


@lru_cache(maxsize=None)
def _compiled(rules: Tuple[Rule, ...]) -> Tuple[_CompiledRule, ...]:
    """Compiled ``rules`` (plain 3-tuples read as rules without ops)."""
    return tuple((re.compile(r[0]), Rule(*r)) for r in rules)


def _match(key: str, rules: Tuple[Rule, ...], layout: str,
           options: Any = None
           ) -> Tuple[Optional[str], str, Optional[Rule]]:
    """``(new key or None, reason, the rule or None)`` for one key (a drop
    rule whose ``unless`` option is set is skipped)."""
    for pattern, rule in _compiled(rules):
        if pattern.search(key):
            if rule.replacement is None and rule.unless and \
                    getattr(options, rule.unless, False):
                continue
            if rule.replacement is None:
                return None, rule.reason, rule
            return pattern.sub(rule.replacement, key, count=1), \
                rule.reason, rule
    return None, f'outside the {layout} layout', None


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
        layout, rules = rules, get_format(rules).rules
    new, reason, _ = _match(key, rules, layout)
    return new, reason


def _ident(tensor: torch.Tensor) -> Tuple:
    """What makes two tensor objects one tensor (same storage view)."""
    return (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(),
            tensor.dtype)


def _apply_ops(rule: Rule, tensor: torch.Tensor, ctx: OpContext,
               cache: Dict[Tuple, Tuple[torch.Tensor, str]]
               ) -> Tuple[torch.Tensor, str]:
    """``rule.ops`` on ``tensor``: ``(result, what changed or '')``; one
    result per source tensor and rule, so aliases stay one tensor."""
    ident = (_ident(tensor), id(rule))
    if ident not in cache:
        after, what = tensor, []
        for op in rule.ops:
            here = replace(ctx, input_shape=tuple(after.shape))
            result = op([after], here)
            if result is not after:
                what.append(op.describe(here))
            after = result
        cache[ident] = (after, '; '.join(what))
    return cache[ident]


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
                layout: str = 'source', *, options: Any = None,
                changes: Optional[List[TensorChange]] = None,
                source: Optional[Mapping[str, torch.Tensor]] = None
                ) -> Dict[str, torch.Tensor]:
    """Rename ``state_dict`` with ``rules`` and apply their declared ops,
    recording every key's fate and every changed tensor.

    Args:
        state_dict (dict): Source tensors.
        rules (tuple[Rule]): Ordered rules.
        report (ConversionReport): Receives kept/aliased/dropped records.
        layout (str): Layout name for unmatched keys' reason.
        options (Request, optional): Read for the rules' ``unless``.
        changes (list[TensorChange], optional): Receives one record per
            kept tensor an op changed.
        source (Mapping, optional): The whole source state dict, for ops
            that read other tensors; defaults to ``state_dict``.

    Returns:
        dict: Output tensors (the source tensor objects unless an op
        changed them).

    Raises:
        KeyCollisionError: If two different tensors map to one key.
    """
    out: Dict[str, torch.Tensor] = {}
    source_of: Dict[str, str] = {}
    cache: Dict[Tuple, Tuple[torch.Tensor, str]] = {}
    for old, tensor in state_dict.items():
        new, reason, rule = _match(old, rules, layout, options)
        shape = tuple(tensor.shape)
        what = ''
        if new is not None and rule.ops and not (
                rule.unless and getattr(options, rule.unless, False)):
            ctx = OpContext(new, (old, ), state_dict if source is None
                            else source)
            tensor, what = _apply_ops(rule, tensor, ctx, cache)
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
            if what and changes is not None:
                changes.append(TensorChange(new, shape, tuple(tensor.shape),
                                            what))
    return out


def chain_rules(state_dict: Dict[str, torch.Tensor],
                rules: Tuple[Rule, ...], report: ConversionReport,
                layout: str, **engine: Any) -> Dict[str, torch.Tensor]:
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
        **engine: ``options``, ``changes``, ``source`` of
            :func:`apply_rules`.

    Returns:
        dict: The renamed tensors.
    """
    second = ConversionReport(report.format, report.title)
    out = apply_rules(state_dict, rules, second, layout, **engine)
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


def derive(state_dict: Dict[str, torch.Tensor], rules: Tuple[Rule, ...],
           *, options: Any = None,
           source: Optional[Mapping[str, torch.Tensor]] = None,
           **engine: Any) -> List[str]:
    """Add the tensors ``rules`` derive from others (a format's
    ``derive``), in place.

    For every key of ``state_dict`` (in order) and every rule whose pattern
    matches it, the key named by the rule's replacement is created, when
    absent, with the rule's ops applied to the matched tensor (in rule
    order, after ``state_dict``'s keys). Nothing is recorded in a report:
    these are not source tensors.

    Args:
        state_dict (dict): Converted tensors; modified in place.
        rules (tuple[Rule]): Derive rules.
        options (Request, optional): Read for the rules' ``unless`` (a set
            option turns the rule off).
        source (Mapping, optional): The whole source state dict (``ctx``).
        **engine: Other engine arguments (ignored).

    Returns:
        list[str]: The keys added.
    """
    added: List[str] = []
    for key in list(state_dict):
        for pattern, rule in _compiled(rules):
            if rule.replacement is None or (
                    rule.unless and getattr(options, rule.unless, False)):
                continue
            if not pattern.search(key):
                continue
            new = pattern.sub(rule.replacement, key, count=1)
            if new in state_dict:
                continue
            ctx = OpContext(new, (key, ), state_dict if source is None
                            else source)
            # one new tensor per key, even for aliases (no cache)
            state_dict[new], _ = _apply_ops(rule, state_dict[key], ctx, {})
            added.append(new)
    return added


def refit(state_dict: Dict[str, torch.Tensor], rules: Tuple[Rule, ...],
          changes: List[TensorChange],
          shapes: Optional[Mapping[str, Tuple[int, ...]]] = None,
          source: Optional[Mapping[str, torch.Tensor]] = None) -> int:
    """Apply the ops of ``rules`` in place to already converted tensors
    (no renaming): the first rule matching a key decides it, keys no rule
    matches are left alone. Used to adapt a result to the module it is
    loaded into (``shapes``: its tensor shapes, as ``ctx.target_shape``).

    Returns:
        int: How many tensors changed (each recorded in ``changes``).
    """
    cache: Dict[Tuple, Tuple[torch.Tensor, str]] = {}
    changed = 0
    for key in list(state_dict):
        for pattern, rule in _compiled(rules):
            if not pattern.search(key):
                continue
            before = state_dict[key]
            ctx = OpContext(key, (key, ), source or state_dict,
                            None if shapes is None else
                            tuple(shapes[key]) if key in shapes else None)
            after, what = _apply_ops(rule, before, ctx, cache)
            if after is not before:
                state_dict[key] = after
                changes.append(TensorChange(key, tuple(before.shape),
                                            tuple(after.shape), what))
                changed += 1
            break
    return changed
