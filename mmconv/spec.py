# Copyright (c) mmconv contributors. All rights reserved.
"""What a source format, a family, a target and an option are (frozen
declarations), the request and result of a conversion, and the one registry.

:mod:`mmconv.formats` fills the registry (only :mod:`mmconv.pipeline`
imports it); README "Layout" says how to add a family. Imports no torch.
"""
from dataclasses import dataclass, field, fields
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator,
                    List, Mapping, NamedTuple, Optional, Tuple, Union)

from .errors import ConversionError, UnknownFormatError, UsageError
from .report import ConversionReport

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    'Rule', 'Surgery', 'SourceFormat', 'Family', 'Target', 'FORMATS',
    'FAMILIES', 'TARGETS', 'OPTIONS', 'register', 'unregister', 'get_format',
    'get_target', 'format_names', 'target_names', 'Request', 'Conversion',
    'check_shapes', 'TensorChange', 'OptionFit', 'TargetModule', 'ModelConfig',
    'Option', 'option', 'check_config'
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
        parts (tuple[str]): Merge several source keys into one: the
            values of the pattern's named group ``part`` in output order
            (``('query', 'key', 'value')``); the engine hands the ops all
            of them at once (:class:`~mmconv.ops.Concatenate`).

    A tuple ``replacement`` writes one source tensor under several keys:
    output ``i`` gets result ``i`` of ops that split (``Chunk``), else
    every output gets the one result (a head saved once, used per layer).
    """

    pattern: str
    replacement: Union[None, str, Tuple[str, ...]]
    reason: str
    ops: Tuple[Any, ...] = ()
    unless: Optional[str] = None
    template: Optional[Tuple[str, str]] = None
    parts: Tuple[str, ...] = ()


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


class ModelConfig(NamedTuple):
    """The model of a config that a conversion implies (what a
    :class:`TargetModule` with ``config`` builds).

    Attributes:
        config (str): ``'package::dir/file.py'`` (a config the package
            ships under ``.mim/configs``) or a config file.
        options (tuple[tuple[str, Any]]): ``(key, value)`` set in the
            config's ``model`` (dotted keys, ``'neck.bias'``), in order.
        title (str): The model, for messages (``'DINO detector (...)'``).
        initialised (tuple[str]): Regexes of module keys this conversion
            never provides (they keep the module's initialisation): not
            missing.
    """

    config: str
    options: Tuple[Tuple[str, Any], ...] = ()
    title: str = ''
    initialised: Tuple[str, ...] = ()


class TargetModule(NamedTuple):
    """The module a family's results are loaded into: :mod:`mmconv.verify`
    builds it on the meta device with the arguments the weights imply and
    compares its state dict's names and shapes with the result.

    Attributes:
        type (str): ``'package.module:Class'`` (imported when a conversion
            is verified, never before); with ``config``, the registry that
            builds the config's ``model`` (``'mmdet.registry:MODELS'``).
        kwargs (callable): ``kwargs(state_dict) -> dict``: the constructor
            arguments the converted tensors imply (raises
            :class:`~mmconv.errors.ConversionError` when they imply none);
            None: the architecture is not recognised (``unknown``). None
            with ``config``.
        what (callable): ``what(kwargs) -> str``: the architecture, for
            messages (``'ResNet-50 backbone'``). None with ``config``.
        strict (bool): Refuse a result that differs from the module
            (:class:`~mmconv.errors.ConversionError`); False records the
            comparison in ``report.backbone`` (a ResNet backbone, a
            detector).
        prefix (str): Result keys under it (stripped) are the module's.
        exclude (str): Regex of result keys (after ``prefix``) that are not
            the module's (a ResNet's ImageNet classifier).
        unknown (str): ``report.backbone`` text when ``kwargs`` gives None.
        config (callable, optional): ``config(conv) -> ModelConfig``: the
            module is the ``model`` of the config the conversion implies
            (:class:`ModelConfig`; None: not recognised, ``unknown``),
            built with the ``type`` registry instead of ``kwargs``.
    """

    type: str
    kwargs: Optional[Callable[[Dict[str, 'torch.Tensor']],
                              Optional[Dict[str, Any]]]]
    what: Optional[Callable[[Dict[str, Any]], str]]
    strict: bool = True
    prefix: str = ''
    exclude: str = ''
    unknown: str = ''
    config: Optional[Callable[['Conversion'], Optional[ModelConfig]]] = None


class Option(NamedTuple):
    """A conversion option, declared once as a :class:`Request` field
    (:func:`option`); the command-line flags, ``SelfSupPretrained``'s
    keywords and the refusal of an option a family does not take
    (``Family.options``) are derived from it (:data:`OPTIONS`).

    Attributes:
        name (str): The :class:`Request` field (and keyword).
        flag (str): Command-line flag, also named in errors.
        help (str): ``--help`` text.
        default: The field's default (``False``: a switch).
        choices (tuple[str], optional): Accepted values.
        type (callable, optional): Converts the command-line string.
        metavar (str, optional): Placeholder in ``--help``.
        initializer (bool): ``SelfSupPretrained`` takes it as a keyword.
    """

    name: str
    flag: str
    help: str
    default: Any = None
    choices: Optional[Tuple[str, ...]] = None
    type: Optional[Callable[[str], Any]] = None
    metavar: Optional[str] = None
    initializer: bool = False

    def argparse_kwargs(self) -> Dict[str, Any]:
        """``parser.add_argument(option.flag, **option.argparse_kwargs())``."""
        if self.default is False:  # a switch
            return dict(dest=self.name, action='store_true', help=self.help)
        extra = dict(choices=self.choices, type=self.type,
                     metavar=self.metavar)
        return dict(dest=self.name, default=self.default, help=self.help,
                    **{k: v for k, v in extra.items() if v is not None})

    def families(self) -> Tuple[str, ...]:
        """The registered families that take it (``Family.options``)."""
        return tuple(f.name for f in FAMILIES.values()
                     if self.name in f.options)


def option(flag: str, help: str, default: Any = None, **kwargs: Any) -> Any:
    """A :class:`Request` field that is an :class:`Option` (``kwargs``:
    its other attributes)."""
    return field(default=default,
                 metadata={'option': dict(flag=flag, help=help, **kwargs)})


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
            position tables): they need not come from the file
            (:func:`mmconv.verify.required_keys`, which the verification,
            ``SelfSupPretrained``, the load-check hook and ``mmconv check``
            read); ``SelfSupPretrained`` leaves them at their
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
        module (TargetModule, optional): The module the results are
            loaded into, which :mod:`mmconv.verify` builds to check them
            (names and shapes; ``never_pretrained`` keys need not be in the
            file).
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
    module: Optional[TargetModule] = field(default=None, compare=False)

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
        format_rules (tuple[tuple[str, tuple[Rule]]]): ``(format name,
            rules)``: tables that convert those source formats straight
            to this target, in place of the format's rules and the
            family's steps (detrex: what its own converters write); the
            target then applies to those formats only.
    """

    name: str
    title: str
    rules: Tuple[Rule, ...] = ()
    surgery: Tuple[Surgery, ...] = ()
    build: Optional[Callable[['Conversion', str], Any]] = field(
        default=None, compare=False)
    file_format: str = 'pytorch'
    suffix: Optional[str] = None
    format_rules: Tuple[Tuple[str, Tuple[Rule, ...]], ...] = ()

    def rules_for(self, fmt: str) -> Optional[Tuple[Rule, ...]]:
        """The direct table for source format ``fmt``, or None."""
        return dict(self.format_rules).get(fmt)


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
        unknown = [o for o in getattr(item, 'options', ())
                   if o not in OPTIONS]
        if unknown:
            raise ValueError(f'family {item.name!r}: unknown options '
                             f'{unknown}; declare them in Request')
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
        families (tuple[str]): Consider only these families' formats in
            auto-detection (a converter script's scope); empty: all.

    The other fields are the options (:data:`OPTIONS`), each declared here
    once with its flag and help (:func:`option`).
    """

    format: str = 'auto'
    target: Optional[str] = None
    select: Optional[str] = option(
        '--select', 'network to take from teacher/student checkpoints such '
        "as DINO's (default: teacher), or 'ema': the model_ema weights of a "
        'ConvNeXt training checkpoint (default: model)',
        choices=('teacher', 'student', 'ema'), initializer=True)
    prefix: Optional[str] = option(
        '--prefix', "convert only keys starting with PREFIX, stripped (e.g. "
        "'backbone.')", initializer=True)
    style: str = option(
        '--style', "ResNet: style of the source: 'caffe' = stride in the 1x1 "
        'conv (detectron2 STRIDE_IN_1X1: True, MSRA models), '
        "'pytorch' = in the 3x3 (torchvision); default: decided from the "
        'file and reported', 'auto', choices=('auto', 'caffe', 'pytorch'))
    keep_fc: bool = option(
        '--keep-fc', 'ResNet: keep an ImageNet classifier (fc) in '
        'detectron2/torchvision output', False)
    keep_classes: bool = option(
        '--keep-classes', 'DETR family: do not remap the 91/92 COCO-id '
        'classifier rows to 80 classes (non-COCO models)', False)
    window_size: Optional[int] = option(
        '--window-size', 'Swin: window size of the target backbone; '
        'relative position tables are resized to it (bicubic, as '
        "MMDetection's SwinTransformer does)", type=int, metavar='N')
    families: Tuple[str, ...] = ()

    def given(self) -> List[str]:
        """Names (keys of :data:`OPTIONS`) of the options set to something
        other than their default."""
        return [name for name, opt in OPTIONS.items()
                if getattr(self, name) != opt.default]


#: Every option, by :class:`Request` field name, in declaration order.
OPTIONS: Dict[str, Option] = {
    f.name: Option(f.name, default=f.default, **f.metadata['option'])
    for f in fields(Request) if 'option' in f.metadata}


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


def check_config(facts: Iterable[Tuple[str, Any, Any]]) -> None:
    """Refuse a ``config.json`` that disagrees with the weights beside it.

    Args:
        facts (Iterable): ``(field, what config.json says, what the weights
            have)`` triples; equal pairs pass.

    Raises:
        ConversionError: One line naming every field that differs.
    """
    wrong = [f'{name}={said} but the weights have {has}'
             for name, said, has in facts if said != has]
    if wrong:
        raise ConversionError(
            'config.json does not describe the weights beside it ('
            + '; '.join(wrong) + '): use the folder as saved by '
            'save_pretrained, or convert the weight file alone')
