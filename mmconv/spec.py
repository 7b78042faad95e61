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

Nothing here imports torch, so the command line's ``--help`` stays light.
"""
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional,
                    Tuple)

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Conversion, Request

__all__ = [
    'Rule', 'Surgery', 'Fit', 'SourceFormat', 'Family', 'Target', 'FORMATS',
    'FAMILIES', 'TARGETS', 'OPTIONS', 'register', 'unregister', 'get_format',
    'get_target', 'format_names', 'target_names'
]

#: ``(regex, replacement or None to drop, reason)``
Rule = Tuple[str, Optional[str], str]
#: A named step that changes a conversion in place (tensor surgery, checks,
#: decisions); it receives the conversion and the request that asked for it.
Surgery = Callable[['Conversion', 'Request'], None]
#: Adapts a conversion in place to the tensor shapes of the module it will
#: be loaded into (``{key: shape}``), as the module itself would at load time.
Fit = Callable[['Conversion', Dict[str, Tuple[int, ...]]], None]

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
        surgery (tuple[Surgery]): Named functions run after renaming, in
            order, before the family's own.
        strict (bool): Refuse a checkpoint with tensors outside the layout
            instead of dropping them (whole-detector formats).
        released (tuple[str]): Example released file names.
        source (str): Where the layout comes from (repository, script).
    """

    name: str
    family: str
    title: str
    rules: Tuple[Rule, ...]
    sentinels: Tuple[str, ...] = ()
    containers: Tuple[str, ...] = ('state_dict', )
    then: Tuple[Rule, ...] = ()
    surgery: Tuple[Surgery, ...] = ()
    strict: bool = False
    released: Tuple[str, ...] = ()
    source: str = ''


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
        never_pretrained (tuple[str]): Regexes of target-module keys no
            pre-trained checkpoint of the family has (ViTDet's relative
            position tables): ``SelfSupPretrained`` leaves them at their
            initialisation, lists them, and does not count them against
            ``min_coverage``.
        fit (callable, optional): ``fit(conversion, shapes)``, run by
            ``SelfSupPretrained`` with the shapes of the module it
            initialises (Swin relative position tables resized to the
            module's window, as the module's own loader would).
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
    never_pretrained: Tuple[str, ...] = ()
    fit: Optional[Fit] = field(default=None, compare=False)
    self_loading: Tuple[str, ...] = ()

    @property
    def default_target(self) -> str:
        """The target used when none is asked for."""
        return self.targets[0]


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
    from .errors import UnknownFormatError
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
    from .errors import UsageError
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
