# Copyright (c) mmconv contributors. All rights reserved.
"""What a checkpoint format, a family and a target *are*, and the one
registry that holds them.

Three kinds of declaration, each a frozen dataclass registered here by the
modules of :mod:`mmconv.formats` (adding a family = one new module there):

* :class:`SourceFormat`: one layout as its authors save it: where the
  weights sit (``containers``), the keys that identify it (``sentinels``),
  its ordered rename table (``rules``: ``(regex, replacement or None to
  drop, reason)``, first match wins) and its tensor surgery as named
  callables beside the table.
* :class:`Family`: what the formats of one architecture share: the options
  that apply to them, the surgery every conversion of the family ends with
  (checks of the result, decisions such as a ResNet's style) and its
  default target.
* :class:`Target`: an output layout (MMDetection, detectron2,
  torchvision): its own rename table from a family's canonical names and
  how the output object is built. A family lists the targets it converts
  to, so a new family needs no change to any target.

What the surgery of a declaration receives and checks is here too: the
:class:`Request` that asked for a conversion, the :class:`Conversion` it
changes, and :func:`check_shapes`.

The registry is filled by importing :mod:`mmconv.formats`, which only
:mod:`mmconv.pipeline` does; the engine reads it from here. Nothing here
imports torch, so the command line's ``--help`` stays light.
"""
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List,
                    Mapping, NamedTuple, Optional, Tuple)

from .errors import ConversionError, UnknownFormatError, UsageError
from .report import ConversionReport

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    'Rule', 'Surgery', 'SourceFormat', 'Family', 'Target', 'FORMATS',
    'FAMILIES', 'TARGETS', 'OPTIONS', 'register', 'unregister', 'get_format',
    'get_target', 'format_names', 'target_names', 'Request', 'Conversion',
    'check_shapes', 'TensorChange', 'OptionFit'
]



class Rule(NamedTuple):
    """One row of a rule table; the first rule whose ``pattern`` matches a
    key decides its fate (a plain ``(pattern, replacement, reason)`` tuple
    is a rule without ops).

    Attributes:
        pattern (str): Regex searched in the key.
        replacement (str | None): ``re.sub`` replacement (first match);
            None drops the tensor with ``reason``.
        reason (str): What the tensor is, for the report.
        ops (tuple[Op]): Declared tensor operations (:mod:`mmconv.ops`)
            applied, in order, to the kept tensor.
        unless (str, optional): A :class:`Request` option that, when set,
            skips ``ops`` (``'keep_classes'``); the key is still renamed.
            A drop rule is then skipped: the next rule decides
            (``'keep_fc'``).
        template (tuple[str, str], optional): The ``(source, target)`` key
            templates of a rule written with :func:`mmconv.reverse.rename`
            (what :func:`mmconv.reverse.reverse_rules` reads); None: not
            reversible.
    """

    pattern: str
    replacement: Optional[str]
    reason: str
    ops: Tuple[Any, ...] = ()
    unless: Optional[str] = None
    template: Optional[Tuple[str, str]] = None


class TensorChange(NamedTuple):
    """One tensor whose values a declared op changed (written by the
    engine only)."""

    key: str
    before: Tuple[int, ...]
    after: Tuple[int, ...]
    what: str

#: A named step that changes a conversion in place (tensor surgery, checks,
#: decisions); it receives the conversion and the request that asked for it.
Surgery = Callable[['Conversion', 'Request'], None]


class OptionFit(NamedTuple):
    """An option that asks for other tensor shapes (Swin's
    ``--window-size N``): the pipeline applies the ops of ``rules`` to the
    converted tensors (:func:`mmconv.convert.refit`, no renaming) with
    ``ctx.target_shape`` from ``shapes(state_dict, value)``, before the
    family's ``finish`` steps.

    Attributes:
        option (str): The :class:`Request` field (a key of
            :data:`OPTIONS`); nothing is done while it is None.
        rules (tuple[Rule]): The rules whose ops fit the tensors.
        shapes (callable): ``shapes(state_dict, value) -> {key: shape}``:
            the target shapes the option's value implies (raises
            :class:`~mmconv.errors.UsageError` for a bad value).
    """

    option: str
    rules: Tuple[Rule, ...]
    shapes: Callable[[Dict[str, 'torch.Tensor'], Any],
                     Dict[str, Tuple[int, ...]]]


#: Options a family may take (``Family.options``), with the command-line
#: flag that names them in errors.
OPTIONS: Dict[str, str] = {
    'select': '--select', 'prefix': '--prefix', 'style': '--style',
    'keep_fc': '--keep-fc', 'keep_classes': '--keep-classes',
    'window_size': '--window-size',
}


@dataclass(frozen=True)
class SourceFormat:
    """A source checkpoint layout.

    Args:
        name (str): Name on the command line (``--from``) and in
            ``method=``.
        family (str): The :class:`Family` it belongs to.
        title (str): Human-readable name.
        rules (tuple[Rule]): Ordered rename rules to the family's canonical
            names; a key no rule matches is dropped as outside the layout.
        sentinels (tuple[str]): Key regexes that must all match for the
            format to be detected; more sentinels rank higher.
        containers (tuple[str]): Checkpoint entries that may hold the state
            dict, outermost first, as the official code saves them.
        then (tuple[Rule]): A second rename table applied to the output of
            ``rules`` (e.g. Caffe2 blob names -> detectron2 -> canonical);
            the report keeps the original source keys.
        derive (tuple[Rule]): Tensors the layout implies but does not
            store, added after ``then``: for every output key a rule's
            pattern matches, the key named by its replacement is created
            with its ``ops`` applied to the matched tensor, when absent
            (FrozenBN statistics); not source records
            (:attr:`Conversion.derived` lists them).
        surgery (tuple[Surgery]): Named functions run after renaming, in
            order, before the family's own.
        strict (bool): Refuse a checkpoint with tensors outside the layout
            instead of dropping them (whole-detector formats).
        released (tuple[str]): Example released file names.
        source (str): Where the layout comes from (repository, script).
        facts (Mapping): What the layout implies that its family's code
            reads instead of testing the format's name (DETR: the model
            options and config to build, the notes to print).
    """

    name: str
    family: str
    title: str
    rules: Tuple[Rule, ...]
    sentinels: Tuple[str, ...] = ()
    containers: Tuple[str, ...] = ('state_dict', )
    then: Tuple[Rule, ...] = ()
    derive: Tuple[Rule, ...] = ()
    surgery: Tuple[Surgery, ...] = ()
    strict: bool = False
    released: Tuple[str, ...] = ()
    source: str = ''
    facts: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Family:
    """What the formats of one architecture share.

    Args:
        name (str): Family name (``'resnet'``, ``'detr'`` ...).
        title (str): Human-readable name.
        options (tuple[str]): Keys of :data:`OPTIONS` that apply; any other
            option given for a checkpoint of this family is a usage error.
        finish (tuple[Surgery]): Run after the format's surgery, for every
            conversion of the family (result checks, decisions, notes).
        targets (tuple[str]): Targets it converts to; the first is the
            default.
        target_rules (tuple[tuple[str, tuple[Rule]]]): ``(target name,
            rules)``: what the family's canonical names become for that
            target, applied before the target's own ``rules`` (the ResNet
            classifier, dropped unless ``--keep-fc``); a key no rule
            matches is dropped as outside the target's layout.
        never_pretrained (tuple[str]): Regexes of target-module keys no
            pre-trained checkpoint of the family has (ViTDet's relative
            position tables): ``SelfSupPretrained`` leaves them at their
            initialisation, lists them, and does not count them against
            ``min_coverage``.
        fit (tuple[Rule]): Rules whose ops adapt a result to the tensor
            shapes of the module it is loaded into (``ctx.target_shape``):
            ``SelfSupPretrained`` applies them with the module's shapes
            (:func:`mmconv.convert.refit`; Swin relative position tables
            resized to the module's window, as the module's own loader
            would).
        fit_options (tuple[OptionFit]): Options that ask for other tensor
            shapes (Swin ``--window-size``), applied by the pipeline.
        self_loading (tuple[str]): ``'module:Class'`` of target modules
            whose own ``init_weights`` loads ``init_cfg['checkpoint']``
            itself whatever the initializer type (MMDetection's
            ``SwinTransformer``): with mmconv imported, an ``init_cfg`` of
            type ``SelfSupPretrained`` on them runs that initializer, as
            on any other module (:func:`mmconv.init.defer_to_initializer`).
    """

    name: str
    title: str
    options: Tuple[str, ...] = ()
    finish: Tuple[Surgery, ...] = ()
    targets: Tuple[str, ...] = ('mmdet', )
    target_rules: Tuple[Tuple[str, Tuple[Rule, ...]], ...] = ()
    never_pretrained: Tuple[str, ...] = ()
    fit: Tuple[Rule, ...] = ()
    self_loading: Tuple[str, ...] = ()
    fit_options: Tuple[OptionFit, ...] = field(default=(), compare=False)

    @property
    def default_target(self) -> str:
        """The target used when none is asked for."""
        return self.targets[0]

    def rules_to(self, target: str) -> Tuple[Rule, ...]:
        """The family's ``target_rules`` for ``target`` (may be empty)."""
        return dict(self.target_rules).get(target, ())


@dataclass(frozen=True)
class Target:
    """An output layout.

    Args:
        name (str): Name on the command line (``--to``).
        title (str): Human-readable name.
        rules (tuple[Rule]): Renames from the family's canonical names
            (empty: canonical names are the target's).
        surgery (tuple[Surgery]): Run after ``rules``.
        build (callable): ``build(conversion, src) -> object to save``;
            None: ``{'state_dict': ..., 'meta': ...}``.
        file_format (str): ``'pytorch'`` (or safetensors by extension) or
            ``'pkl'`` (numpy arrays, detectron2).
        suffix (str, optional): Required extension of the output file.
    """

    name: str
    title: str
    rules: Tuple[Rule, ...] = ()
    surgery: Tuple[Surgery, ...] = ()
    build: Optional[Callable[['Conversion', str], Any]] = field(
        default=None, compare=False)
    file_format: str = 'pytorch'
    suffix: Optional[str] = None


#: Every source format, in registration order.
FORMATS: Dict[str, SourceFormat] = {}
#: Every family.
FAMILIES: Dict[str, Family] = {}
#: Every output layout.
TARGETS: Dict[str, Target] = {}

_TABLES = {SourceFormat: FORMATS, Family: FAMILIES, Target: TARGETS}


def register(*declarations: Any) -> None:
    """Add declarations to the registry.

    Args:
        *declarations: :class:`SourceFormat`, :class:`Family` or
            :class:`Target` objects.

    Raises:
        ValueError: A name is taken already, or a format names an
            unregistered family.
    """
    for item in declarations:
        table = _TABLES[type(item)]
        if item.name in table:
            raise ValueError(f'{type(item).__name__} {item.name!r} is '
                             'registered already')
        if isinstance(item, SourceFormat) and item.family not in FAMILIES:
            raise ValueError(f'format {item.name!r}: register family '
                             f'{item.family!r} first')
        table[item.name] = item


def unregister(*declarations: Any) -> None:
    """Remove declarations added with :func:`register` (tests)."""
    for item in declarations:
        _TABLES[type(item)].pop(item.name, None)


def get_format(name: str) -> SourceFormat:
    """The :class:`SourceFormat` called ``name``.

    Raises:
        UnknownFormatError: If there is none; lists the registered ones.
    """
    try:
        return FORMATS[name]
    except KeyError:
        raise UnknownFormatError(
            f'unknown format {name!r}; supported: '
            f'{", ".join(format_names())}') from None


def get_target(name: str) -> Target:
    """The :class:`Target` called ``name``.

    Raises:
        UsageError: If there is none.
    """
    try:
        return TARGETS[name]
    except KeyError:
        raise UsageError(f'unknown target {name!r}; use one of '
                         f'{", ".join(TARGETS)}') from None


def format_names(family: Optional[str] = None) -> Tuple[str, ...]:
    """Names of the registered formats (of one family)."""
    return tuple(n for n, f in FORMATS.items()
                 if family is None or f.family == family)


def target_names() -> Tuple[str, ...]:
    """Names of the registered targets."""
    return tuple(TARGETS)


def iter_formats() -> Iterator[SourceFormat]:
    """Every registered format."""
    return iter(list(FORMATS.values()))


@dataclass(frozen=True)
class Request:
    """What the caller asked for.

    Attributes:
        format (str): Source format name or ``'auto'``.
        target (str, optional): Output layout; None: the family's default.
        select (str, optional): ``'teacher'``/``'student'`` network, or
            ``'ema'`` (``model_ema`` of ConvNeXt training checkpoints).
        prefix (str, optional): Convert only keys under this prefix.
        style (str): ResNet style, ``'auto'``/``'caffe'``/``'pytorch'``.
        keep_fc (bool): Keep an ImageNet classifier (detectron2/torchvision).
        keep_classes (bool): Do not remap DETR classifier rows.
        window_size (int, optional): Window of the target (Swin): relative
            position tables are resized to it.
        families (tuple[str]): Consider only these families' formats in
            auto-detection (a converter script's scope); empty: all.
    """

    format: str = 'auto'
    target: Optional[str] = None
    select: Optional[str] = None
    prefix: Optional[str] = None
    style: str = 'auto'
    keep_fc: bool = False
    keep_classes: bool = False
    window_size: Optional[int] = None
    families: Tuple[str, ...] = ()

    def given(self) -> List[str]:
        """Names (keys of :data:`OPTIONS`) of the options set to something
        other than their default."""
        defaults = Request()
        return [name for name in OPTIONS
                if getattr(self, name) != getattr(defaults, name)]


@dataclass
class Conversion:
    """A converted checkpoint: the one result type of every family.

    Attributes:
        state_dict (dict): Output tensors in the target's names (source
            tensor objects unless surgery changed them).
        report (ConversionReport): Every source key's fate.
        format (SourceFormat): Source format.
        family (Family): Its family.
        target (Target): Output layout.
        request (Request): What was asked.
        entries (Mapping): Top-level entries of the loaded checkpoint
            (``__author__``, recorded ``meta`` ...).
        source (dict): The unwrapped source state dict.
        meta (dict): Plain-typed facts the family adds to the output meta.
        lines (list[str]): Extra summary lines (``'style:    caffe ...'``).
        changed (list[TensorChange]): Every tensor whose values an op
            changed.
        derived (list[str]): Keys the format's ``derive`` rules added
            (canonical names; not source records).
        notes (list[str]): What the user must know about the result.
        hints (callable, optional): ``hints(dst) -> str``: the config
            changes to use the output.
    """

    state_dict: Dict[str, 'torch.Tensor']
    report: ConversionReport
    format: SourceFormat
    family: Family
    target: Target
    request: Request
    entries: Mapping[str, Any] = field(default_factory=dict)
    source: Dict[str, 'torch.Tensor'] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
    lines: List[str] = field(default_factory=list)
    changed: List[TensorChange] = field(default_factory=list)
    derived: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    hints: Optional[Callable[[str], str]] = None

    def summary(self) -> str:
        """The report's summary plus what the family and surgery added."""
        lines = [self.report.summary()] + self.lines
        lines += [f'changed:  {k} {list(b)} -> {list(a)}: {w}'
                  for k, b, a, w in self.changed]
        lines += [f'note:     {n}' for n in self.notes]
        return '\n'.join(lines)

    def config_hints(self, dst: str = 'DST') -> str:
        """The config changes needed to use the output (may be empty)."""
        return self.hints(dst) if self.hints else ''

    def to_meta(self) -> Dict[str, Any]:
        """Plain-typed provenance for the output's ``meta`` entry."""
        meta = self.report.to_meta()
        meta.update(self.meta)
        if self.changed:
            meta['changed'] = [f'{k} {list(b)} -> {list(a)}: {w}'
                               for k, b, a, w in self.changed]
        if self.notes:
            meta['notes'] = list(self.notes)
        return meta


def check_shapes(state_dict: Mapping[str, 'torch.Tensor'],
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
