# Copyright (c) mmconv contributors. All rights reserved.
"""The one conversion pipeline every face uses.

load once -> unwrap -> detect -> rename (format table, then its second
table) -> surgery (format, family, target) -> invariants -> one
:class:`Conversion` -> one output builder -> one atomic writer.

The command line, ``SelfSupPretrained``, the load-check hook and
``inspect`` all call this module; nothing here knows a particular format:
the declarations are in :mod:`mmconv.formats`.

>>> conv = convert_checkpoint(load_source(path))          # doctest: +SKIP
>>> conv.state_dict, print(conv.summary())                # doctest: +SKIP
"""
import os
from dataclasses import dataclass, field, replace
from typing import (Any, Callable, Dict, List, Mapping, Optional, Tuple,
                    Union)

import torch

from .containers import Unwrapped, take_prefix, unwrap
from .convert import apply_rules, chain_rules
from .detect import Detection, detect_format
from .errors import ConversionError, UnknownFormatError, UsageError
from .formats import (FAMILIES, OPTIONS, Family, SourceFormat, Target,
                      get_format, get_target)
from .io import check_destination, load_source, save_file
from .report import ConversionReport
from .version import __version__

__all__ = ['Request', 'Conversion', 'Written', 'convert_checkpoint',
           'convert_state_dict', 'build_output', 'convert_file',
           'load_and_convert']


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
        """Names (keys of :data:`~mmconv.formats.OPTIONS`) of the options
        set to something other than their default."""
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
        changed (list[tuple]): ``(key, shape before, shape after, what)`` of
            every tensor whose values surgery changed.
        notes (list[str]): What the user must know about the result.
        hints (callable, optional): ``hints(dst) -> str``: the config
            changes to use the output.
    """

    state_dict: Dict[str, torch.Tensor]
    report: ConversionReport
    format: SourceFormat
    family: Family
    target: Target
    request: Request
    entries: Mapping[str, Any] = field(default_factory=dict)
    source: Dict[str, torch.Tensor] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
    lines: List[str] = field(default_factory=list)
    changed: List[Tuple[str, Tuple[int, ...], Tuple[int, ...], str]] = \
        field(default_factory=list)
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


def _check_options(request: Request, family: Family, target: Target) -> None:
    """Refuse options and targets that do not apply (exit 2, one line)."""
    if target.name not in family.targets:
        raise UsageError(
            f'{family.title} checkpoints convert to '
            f'{", ".join(family.targets)} only: drop --to {target.name}')
    for name in request.given():
        if name not in family.options:
            raise UsageError(f'{OPTIONS[name]} does not apply to '
                             f'{family.title} checkpoints: drop it')


def _hint(keys: List[str], given: Optional[SourceFormat],
          request: Request) -> str:
    """Which format auto-detection sees, to suggest as the fix."""
    try:
        detected = detect_format(keys)
    except UnknownFormatError:
        return 'auto-detection does not recognise it either'
    if given is not None and detected.name == given.name:
        return 'it is detected as that format, but does not fit its table'
    fix = f"--from {detected.name} / method='{detected.name}'"
    if request.families and get_format(detected.name).family not in \
            request.families:
        fix = f'mmconv convert SRC DST --from {detected.name}'
    return f'the file looks like {detected.name!r} ({detected.reason}): ' \
        f'use {fix}'


def _resolve(keys: List[str], request: Request
             ) -> Tuple[SourceFormat, str]:
    """The source format and how it was chosen."""
    if request.format != 'auto':
        return get_format(request.format), 'given'
    try:
        detection: Detection = detect_format(keys, request.families)
    except UnknownFormatError as err:
        if not request.families:
            raise
        raise type(err)(f'{err}; {_hint(keys, None, request)}') from None
    return get_format(detection.name), f'detected: {detection.reason}'


def _as_request(request: Union[str, Request], options: Dict[str, Any]
                ) -> Request:
    """``'moco'`` / ``Request(...)`` plus keyword options -> Request."""
    if isinstance(request, Request):
        return replace(request, **options) if options else request
    return Request(format=request, **options)


def convert_state_dict(unwrapped: Union[Unwrapped, Mapping[str, Any]],
                       request: Union[str, Request] = 'auto',
                       entries: Optional[Mapping[str, Any]] = None,
                       **options: Any) -> Conversion:
    """Convert an (unwrapped) state dict as ``request`` says.

    Args:
        unwrapped (Unwrapped | dict): The state dict (and where it was
            found).
        request (str | Request): Format name, ``'auto'`` or a full request.
        entries (Mapping, optional): Top-level checkpoint entries.
        **options: :class:`Request` fields (``target``, ``style`` ...).

    Returns:
        Conversion: Output weights and report.

    Raises:
        UnknownFormatError: ``'auto'`` and nothing (or several) fit.
        UsageError: An option or target that does not apply.
        ConversionError: The given format does not fit (the message names
            the detected one), empty result, collision, strict layout.
    """
    request = _as_request(request, options)
    if not isinstance(unwrapped, Unwrapped):
        unwrapped = Unwrapped(dict(unwrapped))
    sd = unwrapped.state_dict
    keys = list(sd)
    fmt, how = _resolve(keys, request)
    family = FAMILIES[fmt.family]
    target = get_target(request.target or family.default_target)
    _check_options(request, family, target)
    report = ConversionReport(fmt.name, fmt.title, detection=how,
                              where=unwrapped.where,
                              ignored_entries=list(unwrapped.ignored))
    try:
        out = apply_rules(sd, fmt.rules, report, fmt.name)
        if fmt.then:
            out = chain_rules(out, fmt.then, report, fmt.name)
        outside = [r.old for r in report.dropped
                   if r.reason.startswith('outside the ')]
        if fmt.strict and outside:
            raise ConversionError(
                f'{len(outside)} tensors are outside the {fmt.title} layout '
                f'(first: {", ".join(map(repr, outside[:4]))}): the '
                'checkpoint is a variant with no MMDetection equivalent, or '
                f'not {fmt.name}')
        if not out:
            first = ', '.join(repr(k) for k in keys[:3])
            raise ConversionError(
                f'no {family.title} tensor matches the {fmt.name} rules '
                f'({len(sd)} keys, first: {first})')
    except ConversionError as err:
        if how != 'given':
            raise
        raise type(err)(f'{err}; {_hint(keys, fmt, request)}') from None
    conv = Conversion(out, report, fmt, family, target, request,
                      entries=entries or {}, source=sd)
    for step in fmt.surgery + family.finish:
        step(conv, request)
    if target.rules:
        conv.state_dict = chain_rules(conv.state_dict, target.rules, report,
                                      target.name)
    for step in target.surgery:
        step(conv, request)
    return conv


def convert_checkpoint(checkpoint: Any,
                       request: Union[str, Request] = 'auto',
                       **options: Any) -> Conversion:
    """Unwrap, detect (``format='auto'``) and convert a loaded checkpoint.

    Args:
        checkpoint: What :func:`mmconv.io.load_source` returned.
        request (str | Request): Format name, ``'auto'`` or a full request.
        **options: :class:`Request` fields (``select``, ``prefix``,
            ``target`` ...).

    Returns:
        Conversion: Output weights and report.

    Example:
        >>> conv = convert_checkpoint(ckpt, 'moco')        # doctest: +SKIP
        >>> conv = convert_checkpoint(ckpt, target='detectron2',
        ...                           style='caffe')        # doctest: +SKIP
    """
    request = _as_request(request, options)
    unwrapped = unwrap(checkpoint, request.select)
    if request.prefix:
        _check_prefix_applies(list(unwrapped.state_dict), request)
        unwrapped = take_prefix(unwrapped, request.prefix)
    entries = checkpoint if isinstance(checkpoint, Mapping) else {}
    return convert_state_dict(unwrapped, request, entries)


def _check_prefix_applies(keys: List[str], request: Request) -> None:
    """``prefix`` selects part of a bigger model: refuse it for a family
    that converts whole models (the file's family, before stripping)."""
    try:
        fmt, _ = _resolve(keys, request)
    except UnknownFormatError:
        return  # the prefix is there to find the part that is known
    family = FAMILIES[fmt.family]
    if 'prefix' not in family.options:
        raise UsageError(f'{OPTIONS["prefix"]} does not apply to '
                         f'{family.title} checkpoints: drop it')


def _distinct(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Own copies for tensors shared under several names (safetensors
    refuses shared storage)."""
    seen, out = set(), {}
    for k, v in sd.items():
        ident = (v.data_ptr(), tuple(v.shape), v.stride())
        out[k] = v.clone() if ident in seen else v
        seen.add(ident)
    return out


def build_output(conv: Conversion, src: str,
                 safetensors: bool = False) -> Any:
    """The object to write for ``conv.target``.

    The default is ``{'state_dict': ..., 'meta': {...}}`` whose ``meta``
    holds plain types only, so MMEngine reads it under
    ``torch.load(weights_only=True)``; a target may build its own layout
    (detectron2 ``.pkl``, bare torchvision state dict).
    """
    meta = {'converter': 'mmconv', 'mmconv_version': __version__,
            'source_file': os.path.basename(os.fspath(src))}
    meta.update(conv.to_meta())
    if conv.target.build is not None:
        return conv.target.build(conv, meta)
    sd = _distinct(conv.state_dict) if safetensors else conv.state_dict
    return {'state_dict': sd, 'meta': meta}


@dataclass
class Written:
    """A finished file conversion.

    Attributes:
        conversion (Conversion): Weights and report.
        path (str): Final output path.
        sha256 (str | None): sha256 of the output (with ``publish``).
    """

    conversion: Conversion
    path: str
    sha256: Optional[str]


def _check_output(dst: str, target: Optional[Target],
                  out_format: Optional[str]) -> None:
    """Refuse output names/formats the target cannot take (before any
    loading)."""
    if target is None:
        return
    if target.suffix and not os.fspath(dst).endswith(target.suffix):
        raise UsageError(f'{dst}: {target.title} weights must be a '
                         f'{target.suffix} file; name it *{target.suffix}')
    if out_format not in (None, 'pytorch') and \
            target.file_format != 'pytorch':
        raise UsageError(f'{dst}: --out-format {out_format} does not apply '
                         f'to {target.title} output: drop it')


def load_and_convert(src: str, request: Union[str, Request] = 'auto', *,
                     unsafe: bool = False,
                     warn: Optional[Callable[[str], None]] = None,
                     **options: Any) -> Conversion:
    """Load ``src`` (path or URL) safely, once, and convert it."""
    return convert_checkpoint(load_source(src, unsafe=unsafe, warn=warn),
                              request, **options)


def convert_file(src: str, dst: str, request: Union[str, Request] = 'auto',
                 *, unsafe: bool = False, force: bool = False,
                 out_format: Optional[str] = None, publish: bool = False,
                 warn: Optional[Callable[[str], None]] = None,
                 **options: Any) -> Written:
    """Convert the checkpoint ``src`` and write it to ``dst`` atomically.

    The destination is checked before anything is loaded, the source is
    read once, and nothing is written on any error.

    Args:
        src (str): Source checkpoint path or URL.
        dst (str): Output path (``.pth``, ``.safetensors``, ``.pkl`` for
            detectron2).
        request (Request): Format, target and options.
        unsafe (bool): Allow arbitrary pickles (trusted files only).
        force (bool): Overwrite an existing ``dst``.
        out_format (str, optional): ``'pytorch'`` or ``'safetensors'``.
        publish (bool): Add the sha256 prefix to the file name.
        warn (callable, optional): Receives the ``unsafe`` warning.
        **options: :class:`Request` fields.

    Returns:
        Written: Conversion, final path and sha256.
    """
    request = _as_request(request, options)
    _check_output(dst, get_target(request.target) if request.target
                  else None, out_format)
    check_destination(dst, src, force)
    conv = load_and_convert(src, request, unsafe=unsafe, warn=warn)
    _check_output(dst, conv.target, out_format)
    if conv.target.file_format != 'pytorch':
        out_format = conv.target.file_format
    safetensors = out_format == 'safetensors' or (
        out_format is None and os.fspath(dst).endswith('.safetensors'))
    path, sha = save_file(build_output(conv, src, safetensors), dst, src=src,
                          force=force, out_format=out_format,
                          publish=publish)
    return Written(conv, path, sha)
