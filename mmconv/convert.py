# Copyright (c) mmconv contributors. All rights reserved.
"""The rename engine: apply an ordered rule table and its ops to a state
dict, recording every source tensor's fate in the report.

No I/O and no format knowledge: the tables are in :mod:`mmconv.formats`, the
order of the steps in :mod:`mmconv.pipeline`. Every source tensor is kept,
aliased to an identical kept one, or dropped with its reason; two different
tensors never end up under one name.
"""
import re
from dataclasses import replace
from functools import lru_cache
from typing import Any, Dict, List, Mapping, Optional, Pattern, Tuple, Union

import torch

from .errors import ConversionError, KeyCollisionError
from .lazy import defer, is_lazy, load
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
           ) -> Tuple[Optional[Tuple[str, ...]], str, Optional[Rule],
                      Optional[str]]:
    """``(new keys or None, reason, the rule or None, merge part or None)``
    for one key (a drop rule whose ``unless`` option is set is skipped)."""
    for pattern, rule in _compiled(rules):
        found = pattern.search(key)
        if found:
            if rule.replacement is None and rule.unless and \
                    getattr(options, rule.unless, False):
                continue
            if rule.replacement is None:
                return None, rule.reason, rule, None
            templates = (rule.replacement, ) if isinstance(
                rule.replacement, str) else rule.replacement
            news = tuple(pattern.sub(t, key, count=1) for t in templates)
            return news, rule.reason, rule, \
                found.group('part') if rule.parts else None
    return None, f'outside the {layout} layout', None, None


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
    news, reason, _, _ = _match(key, rules, layout)
    return (news[0] if news else None), reason


def _ident(tensor: torch.Tensor) -> Tuple:
    """What makes two tensor objects one tensor (same storage view; the
    same object for lazy tensors)."""
    if is_lazy(tensor):
        return ('lazy', id(tensor))
    return (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(),
            tensor.dtype)


def _run_ops(rule: Rule, tensors: Tuple[torch.Tensor, ...],
             ctx: OpContext) -> Tuple[Any, str]:
    """``rule.ops`` on real ``tensors``: ``(result, what changed or
    '')``."""
    after: Any = tensors[0] if len(tensors) == 1 else list(tensors)
    what = []
    for op in rule.ops:
        shape = tuple(after.shape) if isinstance(after, torch.Tensor) \
            else tuple(after[0].shape)
        here = replace(ctx, input_shape=shape)
        result = op(after if isinstance(after, (list, tuple))
                    else [after], here)
        if result is not after:
            what.append(op.describe(here))
        after = result
    return after, '; '.join(what)


def _apply_ops(rule: Rule, tensors: Tuple[torch.Tensor, ...],
               ctx: OpContext, cache: Dict[Tuple, Tuple[Any, str]]
               ) -> Tuple[Any, str]:
    """``rule.ops`` on ``tensors`` (one, or a merge's parts): ``(result,
    what changed or '')``; one result per source tensor(s) and rule, so
    aliases stay one tensor. Lazy inputs give lazy results
    (:func:`mmconv.lazy.defer`)."""
    ident = (tuple(_ident(t) for t in tensors), id(rule))
    if ident not in cache:
        if any(is_lazy(t) for t in tensors):
            cache[ident] = defer(
                lambda real, here: _run_ops(rule, real, here), tensors, ctx)
        else:
            cache[ident] = _run_ops(rule, tensors, ctx)
    return cache[ident]


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors are one tensor saved under two names."""
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if is_lazy(a) or is_lazy(b):
        return bool(torch.equal(load(a), load(b)))
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
    out: Dict[str, Any] = {}
    source_of: Dict[str, str] = {}
    cache: Dict[Tuple, Tuple[Any, str]] = {}
    # merges: output key -> (rule, {part: (source key, tensor)})
    merges: Dict[str, Tuple[Rule, Dict[str, Tuple[str, torch.Tensor]]]] = {}
    whole = state_dict if source is None else source

    def keep(old: str, news: Tuple[str, ...], tensor: Any, what: str,
             shape: Tuple[int, ...], reason: str) -> None:
        results = tensor if isinstance(tensor, tuple) else \
            (tensor, ) * len(news)
        if len(results) != len(news):
            raise ConversionError(
                f'{old}: the ops give {len(results)} tensors for '
                f'{len(news)} keys ({", ".join(news)})')
        for i, (new, result) in enumerate(zip(news, results)):
            if out.get(new) is not None:
                if not same_tensor(out[new], result):
                    raise KeyCollisionError(
                        f'{source_of[new]!r} and {old!r} both become '
                        f'{new!r} under the {layout} rules but hold '
                        f'different values; the checkpoint is not a plain '
                        f'{layout} layout — check the format')
                report.aliases.append(KeyRecord(old, new, reason, shape))
                continue
            out[new] = result
            source_of[new] = old
            (report.kept if i == 0 else report.copies).append(
                KeyRecord(old, new, reason, shape))
            if what and changes is not None:
                changes.append(TensorChange(new, shape,
                                            tuple(result.shape), what))

    for old, tensor in state_dict.items():
        news, reason, rule, part = _match(old, rules, layout, options)
        shape = tuple(tensor.shape)
        if news is None:
            report.dropped.append(KeyRecord(old, None, reason, shape))
            continue
        if part is not None:
            slots = merges.setdefault(news[0], (rule, {}))[1]
            if part in slots:
                if not same_tensor(slots[part][1], tensor):
                    raise KeyCollisionError(
                        f'{slots[part][0]!r} and {old!r} are both the '
                        f'{part} part of {news[0]!r} under the {layout} '
                        'rules but hold different values; the checkpoint '
                        f'is not a plain {layout} layout — check the format')
                report.aliases.append(KeyRecord(old, news[0], reason, shape))
                continue
            slots[part] = (old, tensor)
            out.setdefault(news[0], None)  # keeps the first part's place
            continue
        what = ''
        if rule.ops and not (rule.unless and getattr(options, rule.unless,
                                                     False)):
            ctx = OpContext(news[0], (old, ), whole)
            tensor, what = _apply_ops(rule, (tensor, ), ctx, cache)
        keep(old, news, tensor, what, shape, reason)
    for new, (rule, slots) in merges.items():
        missing = [p for p in rule.parts if p not in slots]
        if missing:
            raise ConversionError(
                f'{new}: the checkpoint has the {", ".join(slots)} '
                f'part(s) but not {", ".join(missing)} '
                f'({rule.reason}); it is not a complete {layout} layout')
        olds = tuple(slots[p][0] for p in rule.parts)
        tensors = tuple(slots[p][1] for p in rule.parts)
        ctx = OpContext(new, olds, whole)
        merged, what = _apply_ops(rule, tensors, ctx, cache)
        shape = tuple(tensors[0].shape)
        keep(olds[0], (new, ), merged, what, shape, rule.reason)
        report.kept += [KeyRecord(old, new, rule.reason,
                                  tuple(t.shape))
                        for old, t in zip(olds[1:], tensors[1:])]
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
    origin: Dict[str, List[Tuple[KeyRecord, bool]]] = {}
    for record in report.kept + report.copies:
        origin.setdefault(record.new, []).append(
            (record, record in report.kept))
    mapped = {r.old: r.new for r in second.kept}
    report.dropped += [KeyRecord(first.old, None, r.reason, r.shape)
                       for r in second.dropped
                       for first, is_kept in origin.get(r.old, ())
                       if is_kept]
    report.dropped += [replace(r, new=None) for r in report.aliases
                       if r.new not in mapped]
    report.aliases = [replace(r, new=mapped[r.new]) for r in report.aliases
                      if r.new in mapped]
    # two tensors the second table maps to one name: the later is an alias
    report.aliases += [KeyRecord(first.old, r.new, first.reason, r.shape)
                       for r in second.aliases
                       for first, _ in origin.get(r.old, ())]
    # tensors surgery added (no source key, e.g. FrozenBN statistics) are
    # renamed with the rest but are not source records
    kept: List[KeyRecord] = []
    copies: List[KeyRecord] = []
    for records, second_kept in ((second.kept, True),
                                 (second.copies, False)):
        for r in records:
            for first, is_kept in origin.get(r.old, ()):
                (kept if is_kept and second_kept else copies).append(
                    KeyRecord(first.old, r.new, first.reason, r.shape))
    report.kept, report.copies = kept, copies
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
            state_dict[new], _ = _apply_ops(rule, (state_dict[key], ), ctx,
                                             {})
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
            after, what = _apply_ops(rule, (before, ), ctx, cache)
            if after is not before:
                state_dict[key] = after
                changes.append(TensorChange(key, tuple(before.shape),
                                            tuple(after.shape), what))
                changed += 1
            break
    return changed
