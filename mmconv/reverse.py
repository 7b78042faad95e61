# Copyright (c) mmconv contributors. All rights reserved.
"""Rules written once and read both ways.

A rename between two layouts is declared in the forward direction with
:func:`rename`: two key templates with named placeholders, ``<name>`` (an
index, ``\\d+``) or ``<name:regex>``, e.g. ::

    rename('res2.<block>.conv<n:[123]>.norm.', 'layer1.<block>.bn<n>.',
           'res2 norm', prefix=r'^(?:backbone\\.)?')

is the :class:`~mmconv.spec.Rule` ``^(?:backbone\\.)?res2\\.(?P<block>\\d+)
\\.conv(?P<n>[123])\\.norm\\.`` -> ``layer1.\\g<block>.bn\\g<n>.`` that
remembers its templates. :func:`reverse_rules` turns such a table around
(``^layer1\\.(?P<block>\\d+)\\.bn(?P<n>[123])\\.`` ->
``res2.\\g<block>.conv\\g<n>.norm.``, each op replaced by its reverse, in
reverse order): the output layout of a target is then the reverse of the
table that reads it (the ``--to detectron2`` table is the detectron2
format's table read backwards).

What does not come back is explicit: a forward-only ``prefix`` (where a
layout may sit in a bigger model) and ``also`` spellings (other names of
the same tensor) are read but never written; a drop rule has nothing to
bring back and is skipped; a rename without templates, or with an op that
has no reverse, is refused.

Declarations only: no torch, nothing of the engine (format modules build
their tables with it at import).
"""
import re
from typing import Dict, List, Optional, Tuple

from .spec import Rule

__all__ = ['rename', 'reverse_rule', 'reverse_rules', 'is_reversible']

#: ``<name>`` or ``<name:regex>`` in a template.
_FIELD = re.compile(r'<(\w+)(?::([^<>]+))?>')
#: The regex of a placeholder declared without one: a key index.
INDEX = r'\d+'


def _parse(template: str) -> Tuple[List[str], Dict[str, Optional[str]]]:
    """``(literal parts, {name: regex or None})``; the parts interleave
    with the placeholders (``len(parts) == len(names) + 1``)."""
    parts, fields, at = [], {}, 0
    for m in _FIELD.finditer(template):
        if m.group(1) in fields:
            raise ValueError(f'template {template!r}: placeholder '
                             f'<{m.group(1)}> appears twice')
        parts.append(template[at:m.start()])
        fields[m.group(1)] = m.group(2)
        at = m.end()
    parts.append(template[at:])
    return parts, fields


def _regex(template: str, fields: Dict[str, str]) -> str:
    """The regex matching ``template`` (literal text escaped, placeholders
    as named groups)."""
    parts, names = _parse(template)
    out = re.escape(parts[0])
    for name, part in zip(names, parts[1:]):
        out += f'(?P<{name}>{fields[name]}){re.escape(part)}'
    return out


def _replacement(template: str) -> str:
    """The ``re.sub`` replacement writing ``template``."""
    parts, names = _parse(template)
    out = parts[0].replace('\\', r'\\')
    for name, part in zip(names, parts[1:]):
        out += rf'\g<{name}>' + part.replace('\\', r'\\')
    return out


def _annotated(template: str, fields: Dict[str, str]) -> str:
    """``template`` with every placeholder written ``<name:regex>``."""
    return _FIELD.sub(lambda m: f'<{m.group(1)}:{fields[m.group(1)]}>',
                      template)


def _fields(source: str, target: str) -> Dict[str, str]:
    """The placeholders both templates share, with their regexes (declared
    in either template; :data:`INDEX` if in neither)."""
    _, a = _parse(source)
    _, b = _parse(target)
    if set(a) != set(b):
        raise ValueError(
            f'templates {source!r} and {target!r} must have the same '
            f'placeholders (a rename that loses one cannot be reversed)')
    fields = {}
    for name in a:
        ra, rb = a[name], b[name]
        if ra and rb and ra != rb:
            raise ValueError(f'placeholder <{name}> is {ra!r} in {source!r} '
                             f'but {rb!r} in {target!r}')
        fields[name] = ra or rb or INDEX
    return fields


def rename(source: str, target: str, reason: str, *, prefix: str = '^',
           also: Tuple[str, ...] = (), ops: Tuple = (),
           unless: Optional[str] = None) -> Rule:
    """A reversible rename rule from two key templates.

    Args:
        source (str): The source key template (its canonical spelling:
            what the reverse writes).
        target (str): What it becomes; the same placeholders.
        reason (str): What the tensor is, for the report.
        prefix (str): Regex before ``source`` (forward only; the reverse is
            anchored at the start of the key). Defaults to ``'^'``.
        also (tuple[str]): Other literal spellings of ``source`` that are
            read too (forward only; no placeholders).
        ops (tuple[Op]): Declared ops, as :class:`~mmconv.spec.Rule`.
        unless (str, optional): As :class:`~mmconv.spec.Rule`.

    Returns:
        Rule: The forward rule, with its templates.

    Raises:
        ValueError: The templates do not have the same placeholders, or an
            ``also`` spelling has one.
    """
    fields = _fields(source, target)
    for alt in also:
        if _parse(alt)[1]:
            raise ValueError(f'also={alt!r}: other spellings are literal')
    alternatives = [_regex(source, fields)] + [re.escape(a) for a in also]
    body = alternatives[0] if not also else \
        '(?:' + '|'.join(alternatives) + ')'
    return Rule(prefix + body, _replacement(target), reason, tuple(ops),
                unless, (_annotated(source, fields),
                         _annotated(target, fields)))


def is_reversible(rule: Rule) -> bool:
    """Whether :func:`reverse_rule` can turn ``rule`` around."""
    rule = Rule(*rule)
    return (rule.replacement is not None and rule.template is not None
            and all(op.reverse() is not None for op in rule.ops))


def reverse_rule(rule: Rule) -> Rule:
    """The rule that undoes ``rule`` (see the module docstring).

    Raises:
        ValueError: ``rule`` drops its tensor, was not written with
            :func:`rename`, or has an op without a reverse.
    """
    rule = Rule(*rule)
    if rule.replacement is None:
        raise ValueError(f'rule {rule.pattern!r} drops its tensor: nothing '
                         'to reverse')
    if rule.template is None:
        raise ValueError(f'rule {rule.pattern!r} has no templates: write it '
                         'with mmconv.reverse.rename to reverse it')
    back = []
    for op in reversed(rule.ops):
        undo = op.reverse()
        if undo is None:
            raise ValueError(f'rule {rule.pattern!r}: {op.describe()} has '
                             'no reverse (it loses information)')
        back.append(undo)
    source, target = rule.template
    fields = _fields(source, target)
    return Rule('^' + _regex(target, fields), _replacement(source),
                rule.reason, tuple(back), rule.unless, (target, source))


def reverse_rules(rules: Tuple[Rule, ...]) -> Tuple[Rule, ...]:
    """A table turned around: every rename reversed, in the same order;
    drop rules skipped (what the forward table drops is not in its output).

    Raises:
        ValueError: A rename that cannot be reversed (no templates, an op
            without a reverse): refused, not skipped.
    """
    return tuple(reverse_rule(r) for r in rules if Rule(*r).replacement
                 is not None)
