# Copyright (c) mmconv contributors. All rights reserved.
"""What a conversion did to every key, for people and for ``meta``."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

__all__ = ['KeyRecord', 'ModuleCheck', 'ConversionReport']


@dataclass
class ModuleCheck:
    """How a result compares with the module it is loaded into (built by
    :mod:`mmconv.verify`).

    Attributes:
        what (str | None): The architecture the weights imply (``'ResNet-50
            backbone'``); None when they imply none.
        args (dict): The module's constructor arguments (``{'depth': 50}``).
        missing (list[str]): Module keys that must come from the file and
            are absent.
        unexpected (list[str]): Keys the module does not have.
        mismatched (list[str]): ``'key [shape] (expected [shape])'``.
        unchecked (str): Why the module could not be built (its package is
            not installed); empty when it was compared.
        unknown (str): The description when ``what`` is None.
    """

    what: Optional[str]
    args: Dict[str, Any] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)
    unchecked: str = ''
    unknown: str = ''

    @property
    def complete(self) -> bool:
        """Whether the module was compared and every tensor it needs is
        there, with its shape, and nothing else."""
        return self.what is not None and not self.unchecked and not (
            self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """One line for reports."""
        if self.what is None:
            return self.unknown or 'architecture not recognised'
        if self.unchecked:
            return f'{self.what} (not verified: {self.unchecked})'
        if self.complete:
            return f'complete {self.what}'
        parts = [f'{len(items)} {name} (first: {", ".join(items[:3])})'
                 for name, items in (('missing', self.missing),
                                     ('unexpected', self.unexpected),
                                     ('mis-shaped', self.mismatched))
                 if items]
        return f'INCOMPLETE {self.what}: ' + '; '.join(parts)


@dataclass(frozen=True)
class KeyRecord:
    """One source tensor and its fate.

    Attributes:
        old (str): Key in the source.
        new (str | None): Key in the output; ``None`` when dropped.
        reason (str): Rule reason (what the tensor is).
        shape (tuple): Tensor shape.
    """

    old: str
    new: Optional[str]
    reason: str
    shape: Tuple[int, ...] = ()


@dataclass
class ConversionReport:
    """Kept, renamed, dropped and aliased keys of one conversion.

    Attributes:
        format (str): Source format name.
        title (str): Source format title.
        detection (str): Why the format was chosen (``'given'`` if explicit).
        where (str): Where the state dict was found in the checkpoint.
        ignored_entries (list[str]): Other checkpoint entries not converted
            (optimizer, epoch, the unselected DINO network...).
        kept (list[KeyRecord]): Tensors written, with their new names.
        dropped (list[KeyRecord]): Tensors not written, with the reason.
        aliases (list[KeyRecord]): Source keys naming a tensor already kept
            under ``new`` (one tensor registered under several names).
        copies (list[KeyRecord]): Further output keys of a kept source
            tensor written under several names (a tuple replacement).
        backbone (ModuleCheck | None): Comparison with the backbone module
            (ResNet families; :mod:`mmconv.verify`).
    """

    format: str
    title: str
    detection: str = 'given'
    where: str = 'checkpoint'
    ignored_entries: List[str] = field(default_factory=list)
    kept: List[KeyRecord] = field(default_factory=list)
    dropped: List[KeyRecord] = field(default_factory=list)
    aliases: List[KeyRecord] = field(default_factory=list)
    copies: List[KeyRecord] = field(default_factory=list)
    backbone: Optional[ModuleCheck] = None

    @property
    def mapping(self) -> Dict[str, str]:
        """Old → new name of every kept tensor (aliases included)."""
        return {r.old: r.new for r in self.kept + self.aliases}

    @property
    def renamed(self) -> List[KeyRecord]:
        """Kept tensors whose name changed."""
        return [r for r in self.kept if r.old != r.new]

    def dropped_by_reason(self) -> Dict[str, int]:
        """Number of dropped tensors per reason, in first-seen order."""
        counts: Dict[str, int] = {}
        for r in self.dropped:
            counts[r.reason] = counts.get(r.reason, 0) + 1
        return counts

    def summary(self) -> str:
        """A few lines: format, where, counts and drop reasons."""
        lines = [
            f'format:   {self.format} ({self.title}); {self.detection}',
            f'source:   {self.where}'
            + (f'; not converted: {", ".join(self.ignored_entries)}'
               if self.ignored_entries else ''),
            f'kept:     {len(self.kept)} tensors '
            f'({len(self.renamed)} renamed'
            + (f', {len(self.aliases)} aliases merged' if self.aliases
               else '')
            + (f', {len(self.copies)} copies' if self.copies else '')
            + ')',
            f'dropped:  {len(self.dropped)} tensors',
        ]
        lines += [f'          {n:5d}  {reason}'
                  for reason, n in self.dropped_by_reason().items()]
        if self.backbone is not None:
            lines.append(f'module:   {self.backbone.describe()}')
        return '\n'.join(lines)

    def details(self) -> str:
        """Every source key: ``old -> new`` or ``old -> (dropped: why)``."""
        lines = [f'{r.old} -> {r.new}' for r in self.kept]
        lines += [f'{r.old} -> {r.new} (alias of the same tensor)'
                  for r in self.aliases]
        lines += [f'{r.old} -> {r.new} (copy)' for r in self.copies]
        lines += [f'{r.old} -> (dropped: {r.reason})' for r in self.dropped]
        return '\n'.join(lines)

    def to_meta(self) -> Dict[str, object]:
        """Plain-typed provenance for the output's ``meta`` entry."""
        return {
            'source_format': self.format,
            'source_container': self.where,
            'num_tensors': len(self.kept),
            'num_dropped': len(self.dropped),
            'num_aliases': len(self.aliases),
            'dropped_by_reason': self.dropped_by_reason(),
            'backbone': self.backbone.describe() if self.backbone else '',
            **({'num_copies': len(self.copies)} if self.copies else {}),
        }
