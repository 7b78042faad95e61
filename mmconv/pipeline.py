# Copyright (c) mmconv contributors. All rights reserved.
"""The one conversion pipeline every face (command line,
``SelfSupPretrained``, load-check hook) uses: load once -> unwrap -> detect
-> rename and ops -> surgery and checks -> one :class:`Conversion` -> one
output builder -> one atomic writer (:func:`convert_state_dict`,
:func:`convert_file`).

The only importer of :mod:`mmconv.formats`, which fills the registry
(re-exported here for the faces); importing it imports no torch.
"""
import os
from dataclasses import dataclass, replace
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, Mapping,
                    Optional, Tuple, Union)

from . import formats  # noqa: F401 (fills the registry: every format)
from .detect import Detection, detect_format
from .errors import ConversionError, UnknownFormatError, UsageError
from .report import ConversionReport
from .spec import (FAMILIES, FORMATS, OPTIONS, TARGETS, Conversion, Family,
                   Request, SourceFormat, Target, TensorChange, get_format,
                   get_target)
from .version import __version__

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .containers import Unwrapped

__all__ = ['Request', 'Conversion', 'Written', 'convert_checkpoint',
           'convert_state_dict', 'build_output', 'convert_file',
           'load_and_convert', 'load_unwrapped', 'FAMILIES', 'FORMATS',
           'TARGETS', 'OPTIONS']


def _check_options(request: Request, fmt: SourceFormat, family: Family,
                   target: Target) -> None:
    """Refuse options and targets that do not apply (exit 2, one line)."""
    if target.format_rules and target.rules_for(fmt.name) is None:
        raise UsageError(
            f'--to {target.name} applies to '
            f'{", ".join(n for n, _ in target.format_rules)} checkpoints '
            f'only, not {fmt.name}: drop --to {target.name}')
    if target.name not in family.targets and not target.format_rules:
        raise UsageError(
            f'{family.title} checkpoints convert to '
            f'{", ".join(family.targets)} only: drop --to {target.name}')
    for name in request.given():
        if name not in family.options:
            raise UsageError(f'{OPTIONS[name].flag} does not apply to '
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


def _check_strict(fmt: SourceFormat, report: ConversionReport) -> None:
    """Refuse tensors outside a strict format's layout."""
    outside = [r.old for r in report.dropped
               if r.reason.startswith('outside the ')]
    if fmt.strict and outside:
        raise ConversionError(
            f'{len(outside)} tensors are outside the {fmt.title} layout '
            f'(first: {", ".join(map(repr, outside[:4]))}): the '
            'checkpoint is a variant with no MMDetection equivalent, or '
            f'not {fmt.name}')


def _as_request(request: Union[str, Request], options: Dict[str, Any]
                ) -> Request:
    """``'moco'`` / ``Request(...)`` plus keyword options -> Request."""
    if isinstance(request, Request):
        return replace(request, **options) if options else request
    return Request(format=request, **options)


def convert_state_dict(unwrapped: Union['Unwrapped', Mapping[str, Any]],
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
    from .containers import Unwrapped
    from .errors import MMConvError
    from .lazy import computed_outside, has_lazy, materialize
    request = _as_request(request, options)
    if not isinstance(unwrapped, Unwrapped):
        unwrapped = Unwrapped(dict(unwrapped))
    if not has_lazy(unwrapped.state_dict):
        return _convert(unwrapped, request, entries)
    try:  # lazy tensors: the declared ops stream; a step of code may not
        conv = _convert(unwrapped, request, entries)
        if not computed_outside(conv.state_dict):
            return conv
    except MMConvError:
        raise
    except Exception:  # a step computed on a lazy tensor's meta values
        pass
    return _convert(replace(unwrapped, state_dict=materialize(
        unwrapped.state_dict)), request, entries)


def _convert(unwrapped: 'Unwrapped', request: Request,
             entries: Optional[Mapping[str, Any]]) -> Conversion:
    """:func:`convert_state_dict` of an :class:`Unwrapped`."""
    from .convert import apply_rules, chain_rules, derive, refit
    from .verify import verify
    sd = unwrapped.state_dict
    keys = list(sd)
    fmt, how = _resolve(keys, request)
    family = FAMILIES[fmt.family]
    target = get_target(request.target or family.default_target)
    _check_options(request, fmt, family, target)
    direct = target.rules_for(fmt.name)
    report = ConversionReport(fmt.name, fmt.title, detection=how,
                              where=unwrapped.where,
                              ignored_entries=list(unwrapped.ignored))
    try:
        changes: List[TensorChange] = []
        engine = dict(options=request, changes=changes, source=sd)
        out = apply_rules(sd, fmt.rules if direct is None else direct,
                          report, fmt.name, **engine)
        if direct is not None:  # straight to the target: nothing else
            _check_strict(fmt, report)
            return Conversion(out, report, fmt, family, target, request,
                              entries=entries or {}, source=sd,
                              changed=changes)
        if fmt.then:
            out = chain_rules(out, fmt.then, report, fmt.name, **engine)
        _check_strict(fmt, report)
        if not out:
            first = ', '.join(repr(k) for k in keys[:3])
            raise ConversionError(
                f'no {family.title} tensor matches the {fmt.name} rules '
                f'({len(sd)} keys, first: {first})')
    except ConversionError as err:
        if how != 'given':
            raise
        raise type(err)(f'{err}; {_hint(keys, fmt, request)}') from None
    derived = derive(out, fmt.derive, **engine) if fmt.derive else []
    conv = Conversion(out, report, fmt, family, target, request,
                      entries=entries or {}, source=sd, changed=changes,
                      derived=derived)
    for fit in family.fit_options:  # options asking for other shapes
        value = getattr(request, fit.option)
        if value is not None:
            refit(conv.state_dict, fit.rules, conv.changed,
                  fit.shapes(conv.state_dict, value))
    for step in fmt.surgery:
        step(conv, request)
    verify(conv)  # against the family's target module, names and shapes
    for step in family.finish:
        step(conv, request)
    to_target = family.rules_to(target.name) + target.rules
    if to_target:
        conv.state_dict = chain_rules(conv.state_dict, to_target, report,
                                      target.name, **engine)
    for step in target.surgery:
        step(conv, request)
    return conv


def convert_checkpoint(checkpoint: Any,
                       request: Union[str, Request] = 'auto',
                       **options: Any) -> Conversion:
    """Unwrap, detect (``format='auto'``) and convert a loaded checkpoint.

    Args:
        checkpoint: What :func:`mmconv.fetching.load_source` returned.
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
    from .containers import take_prefix, unwrap
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
        raise UsageError(f'{OPTIONS["prefix"].flag} does not apply to '
                         f'{family.title} checkpoints: drop it')


def _distinct(sd: Dict[str, 'torch.Tensor']) -> Dict[str, 'torch.Tensor']:
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
    (detectron2 ``.pkl``, bare torchvision state dict). Lazy tensors stay
    lazy in a PyTorch file (written one by one) and are read here for the
    others.
    """
    from .lazy import materialize
    meta = {'converter': 'mmconv', 'mmconv_version': __version__,
            'source_file': os.path.basename(os.path.normpath(
                os.fspath(src)))}
    meta.update(conv.to_meta())
    if conv.target.build is not None:
        conv.state_dict = materialize(conv.state_dict)
        return conv.target.build(conv, meta)
    if safetensors:  # written whole by safetensors
        return {'state_dict': _distinct(materialize(conv.state_dict)),
                'meta': meta}
    return {'state_dict': conv.state_dict, 'meta': meta}


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
                     lazy: bool = False, **options: Any) -> Conversion:
    """Load ``src`` (path or URL) safely, once, and convert it (``lazy``:
    the tensors of local files and ``hf://`` are read when written,
    :mod:`mmconv.lazy`)."""
    from .fetching import load_source
    return convert_checkpoint(load_source(src, unsafe=unsafe, warn=warn,
                                          lazy=lazy), request, **options)


def load_unwrapped(src: str) -> 'Unwrapped':
    """Load ``src`` (path or URL) safely and find its state dict (every
    registered format's containers are searched)."""
    from .containers import unwrap
    from .fetching import load_source
    return unwrap(load_source(src))


def convert_file(src: str, dst: str, request: Union[str, Request] = 'auto',
                 *, unsafe: bool = False, force: bool = False,
                 out_format: Optional[str] = None, publish: bool = False,
                 warn: Optional[Callable[[str], None]] = None,
                 **options: Any) -> Written:
    """Convert the checkpoint ``src`` and write it to ``dst`` atomically.

    The destination is checked before anything is loaded, the source is
    read once, and nothing is written on any error. Safetensors and
    zip-format PyTorch sources stream: each tensor is read (and its ops
    run) when it is written, so memory does not grow with the model.

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
    from .writing import check_destination, save_file
    request = _as_request(request, options)
    _check_output(dst, get_target(request.target) if request.target
                  else None, out_format)
    check_destination(dst, src, force)
    conv = load_and_convert(src, request, unsafe=unsafe, warn=warn,
                            lazy=True)
    _check_output(dst, conv.target, out_format)
    if conv.target.file_format != 'pytorch':
        out_format = conv.target.file_format
    safetensors = out_format == 'safetensors' or (
        out_format is None and os.fspath(dst).endswith('.safetensors'))
    path, sha = save_file(build_output(conv, src, safetensors), dst, src=src,
                          force=force, out_format=out_format,
                          publish=publish)
    return Written(conv, path, sha)
