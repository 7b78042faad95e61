# Copyright (c) mmconv contributors. All rights reserved.
"""Tensors that are read when written: streaming conversion.

A lazy tensor is a tensor on the meta device (its name, shape and dtype are
all the pipeline reads) that knows how to produce its values: read them from
the source file, or recompute an op result from other lazy tensors. The
engine runs a rule's ops once on the real inputs, for the report and the
value checks, keeps only the shape of the result, and recomputes it when
the writer asks (:mod:`mmconv.writing`), so a conversion holds a few
tensors at a time, whatever the size of the model.
"""
from typing import Any, Callable, Iterator, Mapping, Sequence, Tuple

import torch

__all__ = ['lazy_tensor', 'is_lazy', 'load', 'Loading', 'defer',
           'materialize', 'has_lazy', 'computed_outside']

#: Attribute of a lazy tensor: the zero-argument function giving its values.
_LOADER = '_mmconv_load'


def lazy_tensor(shape: Sequence[int], dtype: torch.dtype,
                loader: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A meta tensor of ``shape`` and ``dtype`` whose values ``loader``
    gives."""
    tensor = torch.empty(tuple(shape), dtype=dtype, device='meta')
    setattr(tensor, _LOADER, loader)
    return tensor


def is_lazy(value: Any) -> bool:
    """Whether ``value`` is a lazy tensor."""
    return isinstance(value, torch.Tensor) and hasattr(value, _LOADER)


def load(value: Any) -> Any:
    """The real tensor for ``value`` (``value`` itself unless it is lazy).

    Raises:
        RuntimeError: A meta tensor without values (a step computed on a
            lazy tensor outside the engine: a bug, never user input).
    """
    if is_lazy(value):
        real = getattr(value, _LOADER)()
        if real.shape != value.shape or real.dtype != value.dtype:
            raise RuntimeError(
                f'lazy tensor {tuple(value.shape)} {value.dtype} loaded as '
                f'{tuple(real.shape)} {real.dtype}')
        return real
    if isinstance(value, torch.Tensor) and value.device.type == 'meta':
        raise RuntimeError('a meta tensor without values reached the output')
    return value


def has_lazy(state_dict: Mapping[str, Any]) -> bool:
    """Whether any value of ``state_dict`` is lazy."""
    return any(is_lazy(v) for v in state_dict.values())


def computed_outside(state_dict: Mapping[str, Any]) -> bool:
    """Whether a value of ``state_dict`` is a meta tensor without values:
    code other than the engine's declared ops (a format's surgery step)
    computed it from a lazy tensor."""
    return any(isinstance(v, torch.Tensor) and v.device.type == 'meta'
               and not is_lazy(v) for v in state_dict.values())


def materialize(state_dict: Mapping[str, Any]) -> dict:
    """``state_dict`` with every lazy tensor read (one tensor object per
    lazy object, so names that shared one still share it)."""
    seen: dict = {}
    out = {}
    for key, value in state_dict.items():
        if is_lazy(value):
            if id(value) not in seen:
                seen[id(value)] = load(value)
            value = seen[id(value)]
        out[key] = value
    return out


class Loading(Mapping):
    """A read-only view of a state dict whose lazy values are read on
    access (what an op's ``ctx.source`` sees)."""

    def __init__(self, state_dict: Mapping[str, Any]) -> None:
        self._state_dict = state_dict

    def __getitem__(self, key: str) -> Any:
        return load(self._state_dict[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._state_dict)

    def __len__(self) -> int:
        return len(self._state_dict)


class _Shared:
    """The recomputed whole of a fan-out result, kept until each of its
    ``parts`` has been read once."""

    def __init__(self, compute: Callable[[], Tuple[torch.Tensor, ...]],
                 parts: int) -> None:
        self.compute, self.parts = compute, parts
        self.value, self.taken = None, set()

    def part(self, index: int) -> torch.Tensor:
        if self.value is None or index in self.taken:
            self.value, self.taken = self.compute(), set()
        self.taken.add(index)
        value = self.value[index]
        if len(self.taken) == self.parts:
            self.value = None
        return value


def defer(run: Callable[[Tuple[Any, ...], Any], Tuple[Any, str]],
          inputs: Tuple[Any, ...], ctx: Any) -> Tuple[Any, str]:
    """``run(inputs, ctx)`` (a rule's ops) on the real values of lazy
    ``inputs``, once, for its report text and value checks; returns lazy
    results that run it again when read (an input returned unchanged stays
    that input).

    Args:
        run (callable): ``run(tensors, ctx) -> (result, what)``; ``result``
            a tensor or a tuple of tensors (a fan-out).
        inputs (tuple): The rule's input tensors, some lazy.
        ctx (OpContext): Its ``source`` is read through :class:`Loading`.

    Returns:
        tuple: ``(lazy result or tuple of them, what)``.
    """
    from dataclasses import replace
    ctx = replace(ctx, source=Loading(ctx.source))

    def compute() -> Any:
        return run(tuple(load(t) for t in inputs), ctx)[0]

    real = tuple(load(t) for t in inputs)
    result, what = run(real, ctx)

    def placeholder(value: torch.Tensor, loader: Callable) -> torch.Tensor:
        for given, seen in zip(inputs, real):
            if value is seen:
                return given
        return lazy_tensor(value.shape, value.dtype, loader)

    if isinstance(result, tuple):
        shared = _Shared(compute, len(result))
        return tuple(placeholder(value, lambda i=i: shared.part(i))
                     for i, value in enumerate(result)), what
    return placeholder(result, compute), what
