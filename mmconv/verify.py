# Copyright (c) mmconv contributors. All rights reserved.
"""Verification against the target module itself, and the one rule for
which target tensors must come from the file.

A family declares the module its results are loaded into
(:class:`~mmconv.spec.TargetModule`: ``'mmdet.models.backbones.resnet:
ResNet'`` and the constructor arguments the converted weights imply);
:func:`verify` builds that module on the meta device (no memory, no
initialisation cost) and compares its state dict's names and shapes with
the result. A detector is the ``model`` of the config its conversion
implies (``TargetModule.config``, a :class:`~mmconv.spec.ModelConfig`),
built the same way by its package's registry. :func:`required_keys` says
which of a module's tensors a file must provide: every one but
BatchNorm's ``num_batches_tracked`` and the family's ``never_pretrained``
keys; the verification, ``SelfSupPretrained``
(:mod:`mmconv.init`), the load-check hook and ``mmconv check`` read it.

MMDetection and mmpretrain are imported by the first verification, never
before (``pip install mmconv`` needs neither): without them a result is
converted unverified, and the report says so.
"""
import copy
import os
import pkgutil
import re
from typing import (TYPE_CHECKING, Any, Dict, Iterable, List, Mapping,
                    Optional, Tuple, Union)

from .errors import ConversionError
from .report import ModuleCheck
from .spec import Conversion, Family, ModelConfig, TargetModule, check_shapes

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ['optional_key', 'required_keys', 'never_pretrained',
           'module_shapes', 'compare', 'check_module', 'verify']

#: Module shapes built so far, by type and arguments (bounded).
_SHAPES: Dict[str, Dict[str, Tuple[int, ...]]] = {}
_MAX_CACHED = 64
#: Configs read so far, by path (bounded by the few a family names).
_CONFIGS: Dict[str, Any] = {}


class ConfigNotFound(ImportError):
    """The config a :class:`~mmconv.spec.ModelConfig` names is not there
    (its package installed without its configs): the result is not
    verified, as without the package."""


def optional_key(family: Optional[Family], key: str) -> bool:
    """Whether the target-module tensor ``key`` need not come from the
    file: a BatchNorm's ``num_batches_tracked`` (files written before
    PyTorch 0.4.1 lack it; loading without it is harmless) or a key the
    family declares ``never_pretrained``."""
    return key.endswith('num_batches_tracked') or key in never_pretrained(
        family, (key, ))


def never_pretrained(family: Optional[Family],
                     keys: Iterable[str]) -> List[str]:
    """The ``keys`` the family declares no pre-trained file has
    (``Family.never_pretrained``), in order."""
    patterns = [re.compile(p) for p in
                (family.never_pretrained if family is not None else ())]
    return [k for k in keys if any(p.search(k) for p in patterns)]


def required_keys(family: Optional[Family],
                  keys: Iterable[str]) -> List[str]:
    """The target-module ``keys`` a file must provide (in order): all but
    those :func:`optional_key` names.

    Args:
        family (Family, optional): The source's family; None (a file in
            the module's own layout) declares no key never pre-trained.
        keys (Iterable[str]): The module's state-dict keys.

    Returns:
        list[str]: The required keys.
    """
    keys = [k for k in keys if not k.endswith('num_batches_tracked')]
    never = set(never_pretrained(family, keys))
    return [k for k in keys if k not in never]


def _import(path: str) -> Any:
    """What ``'package.module:Class'`` names (MMDetection, mmpretrain, or
    :mod:`mmconv.models` of this layer; a registry; a package)."""
    return pkgutil.resolve_name(path)


def _meta_mode():
    """A torch function mode that makes the tensors of parameters and
    buffers on the meta device, and the few a constructor reads back
    (``linspace`` drop-path rates, ``arange`` position indices) on the
    CPU, as they are small (``with torch.device('meta')`` makes those meta
    too, and ``.item()`` on them fails)."""
    import torch
    from torch.overrides import TorchFunctionMode

    factories = {torch.empty, torch.zeros, torch.ones, torch.full,
                 torch.rand, torch.randn, torch.randint, torch.empty_strided,
                 torch.eye, torch.empty_like, torch.zeros_like,
                 torch.ones_like, torch.full_like, torch.rand_like,
                 torch.randn_like}

    class OnMeta(TorchFunctionMode):

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func in factories and kwargs.get('device') is None and (
                    not func.__name__.endswith('_like')
                    or args[0].device.type == 'meta'):
                kwargs['device'] = 'meta'
            return func(*args, **kwargs)

    return OnMeta()


def _config(path: str) -> Any:
    """The mmengine ``Config`` of ``path`` (``'package::dir/file.py'``: a
    config the package ships under ``.mim/configs``; read once).

    Raises:
        ImportError: mmengine or the package is not installed.
        ConfigNotFound: The file is not there.
    """
    if path not in _CONFIGS:
        from mmengine.config import Config
        file = path
        if '::' in path:
            package, rel = path.split('::', 1)
            root = os.path.dirname(_import(package).__file__)
            file = os.path.join(root, '.mim', 'configs', rel)
        if not os.path.isfile(file):
            raise ConfigNotFound(f'config {path} not found')
        _CONFIGS[path] = Config.fromfile(file)
    return _CONFIGS[path]


def _build(target: TargetModule,
           args: Union[Mapping[str, Any], ModelConfig]) -> Any:
    """``target`` built with ``args`` on the meta device: the class with
    those keyword arguments, or, with a :class:`ModelConfig`, the config's
    ``model`` with its options, by the ``target.type`` registry in its
    scope (built, never initialised: no ``init_cfg`` is downloaded)."""
    try:
        made = _import(target.type)
        cfg = None
        if isinstance(args, ModelConfig):
            from mmengine.registry import DefaultScope
            cfg = copy.deepcopy(_config(args.config))
            cfg.merge_from_dict({f'model.{k}': v for k, v in args.options})
    except ImportError:
        raise
    except Exception as err:  # a broken install
        raise ImportError(f'{type(err).__name__}: {err}') from err
    if cfg is None:
        with _meta_mode():
            return made(**args)
    with DefaultScope.overwrite_default_scope(made.scope), _meta_mode():
        return made.build(cfg.model)


def _cache_key(target: TargetModule,
               args: Union[Mapping[str, Any], ModelConfig]) -> str:
    """What a built module's shapes are cached by."""
    if isinstance(args, ModelConfig):
        return f'{target.type}{args.config}{args.options!r}'
    return f'{target.type}{sorted(args.items())!r}'


def module_shapes(target: TargetModule,
                  kwargs: Union[Mapping[str, Any], ModelConfig]
                  ) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of the state dict of ``target`` built with
    ``kwargs`` (a :class:`ModelConfig` for a ``config`` target) on the
    meta device (cached per type and arguments).

    Raises:
        ImportError: The module cannot be imported (its package is not
            installed, or its import fails; :class:`ConfigNotFound`).
    """
    key = _cache_key(target, kwargs)
    if key not in _SHAPES:
        module = _build(target, kwargs)
        if len(_SHAPES) >= _MAX_CACHED:
            _SHAPES.pop(next(iter(_SHAPES)))
        _SHAPES[key] = {k: tuple(v.shape)
                        for k, v in module.state_dict().items()}
    return _SHAPES[key]


def compare(state_dict: Mapping[str, 'torch.Tensor'],
            shapes: Mapping[str, Tuple[int, ...]],
            family: Optional[Family],
            initialised: Iterable[str] = ()) -> Tuple[List[str], List[str],
                                                      List[str]]:
    """``(missing, unexpected, mis-shaped)`` of ``state_dict`` against a
    module's ``shapes``: required keys (:func:`required_keys`, less those
    the ``initialised`` regexes match) absent, keys the module does not
    have, and ``'key [shape] (expected [shape])'``."""
    left = [re.compile(p) for p in initialised]
    missing = [k for k in required_keys(family, shapes)
               if k not in state_dict and not any(p.search(k) for p in left)]
    unexpected = [k for k in state_dict if k not in shapes]
    wrong = [f'{k} {list(v.shape)} (expected {list(shapes[k])})'
             for k, v in state_dict.items()
             if k in shapes and tuple(v.shape) != tuple(shapes[k])]
    return missing, unexpected, wrong


def _module_part(target: TargetModule, state_dict: Mapping[str, Any]
                 ) -> Dict[str, Any]:
    """The result keys that are the module's (``prefix`` stripped,
    ``exclude`` left out)."""
    n = len(target.prefix)
    part = {k[n:]: v for k, v in state_dict.items()
            if k.startswith(target.prefix)}
    if target.exclude:
        part = {k: v for k, v in part.items()
                if not re.search(target.exclude, k)}
    return part


def _check(target: TargetModule, state_dict: Mapping[str, Any],
           family: Optional[Family], conv: Optional[Conversion]
           ) -> Tuple[ModuleCheck, Dict[str, Any],
                      Optional[Dict[str, Tuple[int, ...]]]]:
    """:func:`check_module`, with the module's part of the result and its
    shapes (None when not built)."""
    part = _module_part(target, state_dict)
    initialised: Tuple[str, ...] = ()
    if target.config is not None:
        if conv is None:
            raise TypeError(f'{target.type}: a config target is checked '
                            'with its conversion')
        args: Any = target.config(conv)
        if args is not None:
            what = args.title or f'model of {args.config}'
            report = {'config': args.config, 'options': dict(args.options)}
            initialised = args.initialised
    else:
        args = target.kwargs(part)
        if args is not None:
            what, report = target.what(args), dict(args)
    if args is None:
        return ModuleCheck(None, unknown=target.unknown), part, None
    try:
        shapes = module_shapes(target, args)
    except ConfigNotFound as err:
        return ModuleCheck(what, report, unchecked=str(err)), part, None
    except ImportError as err:
        package = target.type.split(':')[0]
        return ModuleCheck(what, report, unchecked=(
            f'{err.name} is not installed' if err.name else
            f'{package} cannot be imported: {err}')), part, None
    except Exception as err:  # the constructor refuses the arguments
        raise ConversionError(
            f'{what}: {target.type} cannot be built with the arguments the '
            f'weights imply ({type(err).__name__}: {err})') from None
    missing, unexpected, wrong = compare(part, shapes, family, initialised)
    return (ModuleCheck(what, report, missing, unexpected, wrong), part,
            shapes)


def check_module(target: TargetModule, state_dict: Mapping[str, Any],
                 family: Optional[Family],
                 conv: Optional[Conversion] = None) -> ModuleCheck:
    """Build ``target`` with the arguments ``state_dict`` implies (a
    ``config`` target: the config ``conv`` implies) and compare.

    Raises:
        ConversionError: ``target.kwargs`` finds no consistent
            architecture (strict families).
    """
    return _check(target, state_dict, family, conv)[0]


def verify(conv: Conversion) -> None:
    """Compare a conversion with its family's target module
    (``Family.module``): a strict family refuses a difference, the others
    record it in ``conv.report.backbone``.

    Raises:
        ConversionError: One line naming up to four missing, unexpected and
            mis-shaped tensors each (strict families).
    """
    target = conv.family.module
    if target is None:
        return
    check, part, shapes = _check(target, conv.state_dict, conv.family, conv)
    if not target.strict:
        conv.report.backbone = check
        return
    if check.what is None:
        raise ConversionError(target.unknown)
    if check.unchecked:
        conv.notes.append(f'not verified against {target.type} '
                          f'({check.unchecked})')
        return
    if not check.complete:
        missing = set(check.missing)
        check_shapes(part, {k: s for k, s in shapes.items()
                            if k in part or k in missing}, check.what)
        raise ConversionError(f'not a consistent {check.what}: '
                              f'{check.describe()}')  # pragma: no cover
