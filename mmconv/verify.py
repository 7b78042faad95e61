# Copyright (c) mmconv contributors. All rights reserved.
"""Verification against the target module itself, and the one rule for
which target tensors must come from the file.

A family declares the module its results are loaded into
(:class:`~mmconv.spec.TargetModule`: ``'mmdet.models.backbones.resnet:
ResNet'`` and the constructor arguments the converted weights imply);
:func:`verify` builds that module on the meta device (no memory, no
initialisation cost) and compares its state dict's names and shapes with
the result. :func:`required_keys` says which of a module's tensors a file
must provide: every one but BatchNorm's ``num_batches_tracked`` and the
family's ``never_pretrained`` keys; the verification, ``SelfSupPretrained``
(:mod:`mmconv.init`), the load-check hook and ``mmconv check`` read it.

MMDetection and mmpretrain are imported by the first verification, never
before (``pip install mmconv`` needs neither): without them a result is
converted unverified, and the report says so.
"""
import pkgutil
import re
from typing import (TYPE_CHECKING, Any, Dict, Iterable, List, Mapping,
                    Optional, Tuple)

from .errors import ConversionError
from .report import ModuleCheck
from .spec import Conversion, Family, TargetModule, check_shapes

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ['optional_key', 'required_keys', 'never_pretrained',
           'module_shapes', 'compare', 'check_module', 'verify']

#: Module shapes built so far, by type and arguments (bounded).
_SHAPES: Dict[str, Dict[str, Tuple[int, ...]]] = {}
_MAX_CACHED = 64


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


def _import(path: str) -> type:
    """The class ``'package.module:Class'`` names (MMDetection,
    mmpretrain, or :mod:`mmconv.models` of this layer)."""
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


def module_shapes(target: TargetModule, kwargs: Mapping[str, Any]
                  ) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of the state dict of ``target`` built with
    ``kwargs`` on the meta device (cached per type and arguments).

    Raises:
        ImportError: The module cannot be imported (its package is not
            installed, or its import fails).
    """
    key = f'{target.type}{sorted(kwargs.items())!r}'
    if key not in _SHAPES:
        try:
            cls = _import(target.type)
        except ImportError:
            raise
        except Exception as err:  # a broken install
            raise ImportError(f'{type(err).__name__}: {err}') from err
        with _meta_mode():
            module = cls(**kwargs)
        if len(_SHAPES) >= _MAX_CACHED:
            _SHAPES.pop(next(iter(_SHAPES)))
        _SHAPES[key] = {k: tuple(v.shape)
                        for k, v in module.state_dict().items()}
    return _SHAPES[key]


def compare(state_dict: Mapping[str, 'torch.Tensor'],
            shapes: Mapping[str, Tuple[int, ...]],
            family: Optional[Family]) -> Tuple[List[str], List[str],
                                               List[str]]:
    """``(missing, unexpected, mis-shaped)`` of ``state_dict`` against a
    module's ``shapes``: required keys (:func:`required_keys`) absent,
    keys the module does not have, and ``'key [shape] (expected
    [shape])'``."""
    missing = [k for k in required_keys(family, shapes)
               if k not in state_dict]
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


def check_module(target: TargetModule, state_dict: Mapping[str, Any],
                 family: Optional[Family]) -> ModuleCheck:
    """Build ``target`` with the arguments ``state_dict`` implies and
    compare.

    Raises:
        ConversionError: ``target.kwargs`` finds no consistent
            architecture (strict families).
    """
    part = _module_part(target, state_dict)
    kwargs = target.kwargs(part)
    if kwargs is None:
        return ModuleCheck(None, unknown=target.unknown)
    what = target.what(kwargs)
    try:
        shapes = module_shapes(target, kwargs)
    except ImportError as err:
        package = target.type.split(':')[0]
        return ModuleCheck(what, dict(kwargs), unchecked=(
            f'{err.name} is not installed' if err.name else
            f'{package} cannot be imported: {err}'))
    except Exception as err:  # the constructor refuses the arguments
        raise ConversionError(
            f'{what}: {target.type} cannot be built with the arguments the '
            f'weights imply ({type(err).__name__}: {err})') from None
    missing, unexpected, wrong = compare(part, shapes, family)
    return ModuleCheck(what, dict(kwargs), missing, unexpected, wrong)


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
    check = check_module(target, conv.state_dict, conv.family)
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
        part = _module_part(target, conv.state_dict)
        shapes = module_shapes(target, check.args)
        required = set(required_keys(conv.family, shapes))
        check_shapes(part, {k: s for k, s in shapes.items()
                            if k in required or k in part}, check.what)
        raise ConversionError(f'not a consistent {check.what}: '
                              f'{check.describe()}')  # pragma: no cover
