# Copyright (c) mmconv contributors. All rights reserved.
"""Find the state dict inside a checkpoint object (:func:`unwrap`): the
entries every registered format declares in ``containers``
(:data:`mmconv.spec.FORMATS`) and :data:`CONTAINER_KEYS`; README's format
tables say where each source keeps its weights.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .errors import ConversionError, InputError
from .spec import FORMATS

__all__ = ['unwrap', 'Unwrapped', 'Assembled', 'CONTAINER_KEYS',
           'is_state_dict', 'take_prefix', 'container_keys']

#: Entries searched, in this order, for a nested state dict.
CONTAINER_KEYS: Tuple[str, ...] = ('state_dict', 'model', 'classy_state_dict',
                                   'base_model', 'trunk', 'module',
                                   'network', 'net')
#: Entries holding two networks, of which one is chosen (DINO, iBOT...).
SELECTABLE: Tuple[str, ...] = ('teacher', 'student')
#: ``select`` values naming a top-level entry kept beside the default
#: ``model`` (official ConvNeXt training checkpoints: ``model_ema``).
ALTERNATIVES: Dict[str, str] = {'ema': 'model_ema'}


class Assembled(dict):
    """A checkpoint mmconv builds from what a source says about its weights
    (a ``.safetensors`` file, a Hugging Face folder or ``hf://`` name):
    ``{'state_dict': tensors, 'config': config.json, 'meta': metadata}``.

    Its entries besides ``state_dict`` describe the weights (the formats
    read them from ``Conversion.entries``): :func:`unwrap` never lists them
    as not converted.
    """


@dataclass
class Unwrapped:
    """A state dict found inside a checkpoint.

    Attributes:
        state_dict (dict): The tensors, keyed by the source's names.
        path (list[str]): Entries walked to reach it (``[]``: the file itself).
        ignored (list[str]): Other entries seen on the way (``optimizer``,
            ``epoch``, ``student``...), as ``path.key`` strings.
    """

    state_dict: Dict[str, torch.Tensor]
    path: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        """``checkpoint['a']['b']`` style description of :attr:`path`."""
        return 'checkpoint' + ''.join(f'[{p!r}]' for p in self.path)


def container_keys() -> Tuple[str, ...]:
    """:data:`CONTAINER_KEYS` then the other registered formats' containers
    (``teacher``/``student`` are chosen by ``select``, not searched)."""
    keys = list(CONTAINER_KEYS)
    for fmt in FORMATS.values():
        keys += [k for k in fmt.containers
                 if k not in keys and k not in SELECTABLE]
    return tuple(keys)


def _tensors_only(obj: Mapping, path: List[str],
                  ignored: List[str]) -> Optional[Dict[str, Any]]:
    """Inside a container (``path`` non-empty): the tensors of a mapping
    that also holds scalars/strings (Detectron1 ``blobs``); the others are
    listed in ``ignored``. None if that does not apply."""
    if not path or not obj or not all(isinstance(k, str) for k in obj):
        return None
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    others = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not tensors or any(isinstance(obj[k], Mapping) for k in others):
        return None
    prefix = '.'.join(path + [''])
    ignored += [f'{prefix}{k}' for k in others]
    return tensors


def is_state_dict(obj: Any) -> bool:
    """Whether ``obj`` is a non-empty mapping of names to tensors only."""
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def unwrap(checkpoint: Any, select: Optional[str] = None) -> Unwrapped:
    """Return the state dict inside ``checkpoint``.

    Descends through the entries of :data:`CONTAINER_KEYS` (and, for
    teacher/student checkpoints such as DINO's, the one named by ``select``)
    until it reaches a mapping whose values are all tensors.

    Args:
        checkpoint: What ``torch.load`` returned.
        select (str, optional): ``'teacher'`` or ``'student'`` for checkpoints
            holding both, as entries (DINO, iBOT) or as key prefixes of one
            state dict (a consolidated DINOv2 ``SSLMetaArch``:
            ``teacher.backbone.*``, ``student.backbone.*``; defaults to
            ``'teacher'``); ``'ema'`` for the
            ``model_ema`` entry instead of ``model`` (:data:`ALTERNATIVES`).

    Returns:
        Unwrapped: The state dict, where it was and what else was there.

    Raises:
        InputError: If no state dict of tensors is found.
        ConversionError: If ``select`` names an entry that is not there.

    Example:
        >>> ckpt = {'epoch': 3, 'state_dict': {'w': torch.zeros(1)}}
        >>> unwrap(ckpt).where
        "checkpoint['state_dict']"
    """
    if select in ALTERNATIVES:
        return _unwrap_alternative(checkpoint, select)
    if select is not None and select not in SELECTABLE:
        raise ConversionError(
            f'select={select!r} is not one of '
            f'{", ".join(SELECTABLE + tuple(ALTERNATIVES))}')
    obj, path, ignored = checkpoint, [], []
    searched = container_keys()
    while not is_state_dict(obj):
        if not isinstance(obj, Mapping) or not obj:
            break
        present = [k for k in SELECTABLE if k in obj]
        if present:
            key = select or 'teacher'
            if key not in obj:
                raise ConversionError(
                    f'the checkpoint has no {key!r} entry to select '
                    f'(it has {", ".join(present)})')
        else:
            key = next((k for k in searched
                        if isinstance(obj.get(k), Mapping)), None)
            if key is None:
                tensors = _tensors_only(obj, path, ignored)
                if tensors is not None:
                    obj = tensors
                break
        prefix = '.'.join(path + [''])
        if not isinstance(obj, Assembled):
            ignored += [f'{prefix}{k}' for k in obj if k != key]
        obj, path = obj[key], path + [key]
    if not is_state_dict(obj):
        raise InputError(_describe_missing_state_dict(checkpoint, obj, path))
    unwrapped = Unwrapped(dict(obj), path, ignored)
    if any(p in SELECTABLE for p in path):
        return unwrapped
    if set(SELECTABLE) <= {k.split('.', 1)[0] for k in obj}:
        return take_prefix(unwrapped, f'{select or "teacher"}.')
    if select is not None:
        raise ConversionError(
            f'select={select!r} was given but the checkpoint has no '
            'teacher/student entries')
    return unwrapped


def _unwrap_alternative(checkpoint: Any, select: str) -> Unwrapped:
    """The state dict under the top-level entry ``select`` names."""
    entry = ALTERNATIVES[select]
    if not isinstance(checkpoint, Mapping) or not isinstance(
            checkpoint.get(entry), Mapping):
        have = ', '.join(map(repr, list(checkpoint)[:5])) if isinstance(
            checkpoint, Mapping) else type(checkpoint).__name__
        raise ConversionError(
            f'select={select!r}: the checkpoint has no {entry!r} entry (it '
            f'has {have}); drop select to convert the model weights')
    inner = unwrap(checkpoint[entry])
    others = [k for k in checkpoint if k != entry]
    return Unwrapped(inner.state_dict, [entry] + inner.path,
                     others + inner.ignored)


def _describe_missing_state_dict(checkpoint: Any, obj: Any,
                                 path: List[str]) -> str:
    """One line saying why no state dict was found."""
    where = 'checkpoint' + ''.join(f'[{p!r}]' for p in path)
    if isinstance(obj, Mapping):
        if not obj:
            return f'{where} is empty: there are no weights to convert'
        kinds = sorted({type(v).__name__ for v in obj.values()})
        keys = ', '.join(map(repr, list(obj)[:5]))
        if not any(isinstance(v, torch.Tensor) for v in obj.values()):
            return (f'{where} holds no tensors (keys {keys}; value types '
                    f'{", ".join(kinds)}): not a model checkpoint')
        return (f'{where} mixes tensors with {", ".join(kinds)} '
                f'(keys {keys}) and has none of the entries '
                f'{", ".join(CONTAINER_KEYS)}: not a recognised checkpoint')
    return (f'{where} is a {type(obj).__name__}, not a dict of tensors: '
            'not a model checkpoint')


def take_prefix(unwrapped: Unwrapped, prefix: str) -> Unwrapped:
    """Keep the keys under ``prefix``, stripped; the rest are ignored.

    Raises:
        ConversionError: If no key starts with ``prefix``.
    """
    sd = unwrapped.state_dict
    taken = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not taken:
        raise ConversionError(
            f'no key starts with prefix {prefix!r} (first keys: '
            + ', '.join(repr(k) for k in list(sd)[:3]) + '); fix prefix=')
    others = len(sd) - len(taken)
    ignored = unwrapped.ignored + (
        [f'{others} keys outside prefix {prefix!r}'] if others else [])
    return Unwrapped(taken, unwrapped.path + [f'{prefix}*'], ignored)
