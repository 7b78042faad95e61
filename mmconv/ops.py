# Copyright (c) mmconv contributors. All rights reserved.
"""Tensor operations a rule declares (:class:`Op`): the only way a
conversion changes tensor values. Formats declare them; the engine
(:mod:`mmconv.convert`) applies them and records each change.
"""
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

from .errors import ConversionError

__all__ = [
    'Op', 'OpContext', 'SelectRows', 'Regroup', 'Reshape', 'ToVector',
    'Flatten', 'SliceTokens', 'DensifySparseKernel', 'Fill', 'Chunk',
    'Concatenate', 'ScaleRows', 'ResizeTable', 'Permute', 'Chain',
    'When'
]


@dataclass(frozen=True)
class OpContext:
    """What an op may read besides its tensors.

    Attributes:
        key (str): The output key (the first output's, for merges).
        source_keys (tuple[str]): The source keys of the input tensors.
        source (Mapping): The whole source state dict (read-only), for ops
            whose result depends on other tensors (the number of class and
            register tokens of a ViT).
        target_shape (tuple, optional): The shape the target module has for
            ``key``, when the engine knows it.
        input_shape (tuple, optional): The shape of the op's input (set
            by the engine for each op of a rule), for ``describe``.
    """

    key: str
    source_keys: Tuple[str, ...] = ()
    source: Mapping[str, Any] = field(default_factory=dict)
    target_shape: Optional[Tuple[int, ...]] = None
    input_shape: Optional[Tuple[int, ...]] = None


class Op:
    """A declared tensor operation: a frozen dataclass.

    ``op(tensors, ctx)`` takes the tensors the rule matched (one, or several
    for ops that merge) and returns the new tensor(s), never changing its
    inputs; returning the input object itself means "nothing to change" (no
    change is recorded). ``describe()`` is the line the report prints;
    ``reverse()`` the op that undoes it, or None where the op loses
    information (rows dropped, tokens sliced, tables resampled). Compare
    transformers v5 ``ConversionOps`` (``Chunk``, ``Concatenate``,
    ``PermuteForRope``, each with a ``reverse_op``).
    """

    #: how many input tensors it takes (0: any number >= 1)
    arity: int = 1

    def __call__(self, tensors: Sequence[Any], ctx: OpContext) -> Any:
        raise NotImplementedError

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        """One line for the report: what the op did (``ctx``: where)."""
        raise NotImplementedError

    def reverse(self) -> Optional['Op']:
        """The op that undoes this one, or None if it loses information."""
        return None


def _one(tensors: Sequence[Any]) -> Any:
    """The single input of a one-tensor op."""
    return tensors[0] if isinstance(tensors, (list, tuple)) else tensors


def _index(values: Sequence[int]) -> Any:
    import torch
    return torch.tensor(list(values))


@dataclass(frozen=True)
class SelectRows(Op):
    """Rows ``index`` of dimension ``dim``, in that order (gather).

    Args:
        index (tuple[int]): Source row of every output row.
        rows (int, optional): Rows the source must have.
        what (str): What the rows are, for the report.
        mismatch (str): Error when the source has another number of rows;
            ``{rows}`` is the source's count, ``{key}`` its name.
        dim (int): Dimension. Defaults to 0.
    """

    index: Tuple[int, ...]
    rows: Optional[int] = None
    what: str = ''
    mismatch: str = '{key}: {rows} rows, expected {expected}'
    dim: int = 0

    def __call__(self, tensors, ctx):
        tensor = _one(tensors)
        size = tensor.shape[self.dim]
        if self.rows is not None and size != self.rows:
            raise ConversionError(self.mismatch.format(
                key=ctx.source_keys[0] if ctx.source_keys else ctx.key,
                rows=size, expected=self.rows))
        return tensor.index_select(self.dim, _index(self.index))

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return self.what or f'rows {list(self.index)} of dim {self.dim}'

    def reverse(self) -> Optional[Op]:
        n = len(self.index)
        if self.rows != n or sorted(self.index) != list(range(n)):
            return None  # rows dropped or repeated: not invertible
        inverse = [0] * n
        for out_row, src_row in enumerate(self.index):
            inverse[src_row] = out_row
        return SelectRows(tuple(inverse), n, f'undo: {self.describe()}',
                          self.mismatch, self.dim)


@dataclass(frozen=True)
class Permute(Op):
    """``tensor.permute(order)`` (contiguous)."""

    order: Tuple[int, ...]

    def __call__(self, tensors, ctx):
        return _one(tensors).permute(*self.order).contiguous()

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return f'permute dims {list(self.order)}'

    def reverse(self) -> Op:
        inverse = [0] * len(self.order)
        for i, d in enumerate(self.order):
            inverse[d] = i
        return Permute(tuple(inverse))


@dataclass(frozen=True)
class Regroup(Op):
    """Interleave ``len(blocks)`` equal blocks of dimension ``dim``.

    The input along ``dim`` is the concatenation of blocks ``[x0, x1, ...,
    x{g-1}]`` of ``C`` channels each; output channel ``c * g + k`` is
    channel ``c`` of block ``blocks[k]``. With ``blocks=(0, 2, 1, 3)`` this
    is the ``nn.Unfold`` order of a 2x2 patch merging (MMDetection's
    ``correct_unfold_reduction_order``); ``inverse=True`` undoes it.

    Args:
        blocks (tuple[int]): Source block of every position in a group.
        dim (int): Dimension. Defaults to 0.
        what (str): For the report.
        inverse (bool): Apply the inverse permutation.
        ndim (int, optional): The rank the tensor must have.
        mismatch (str): Error for a tensor of another rank or whose
            ``dim`` does not split into the blocks (``{key}``: its name,
            ``{shape}``: its shape); empty: the generic one.
    """

    blocks: Tuple[int, ...]
    dim: int = 0
    what: str = ''
    inverse: bool = False
    ndim: Optional[int] = None
    mismatch: str = ''

    def order(self, size: int) -> Any:
        """The gather index along ``dim`` for ``size`` channels."""
        import torch
        g = len(self.blocks)
        if size % g:
            raise ConversionError(
                f'{size} channels do not split into {g} equal blocks')
        c = size // g
        blocks = torch.tensor(self.blocks)
        index = (blocks.view(1, g) * c + torch.arange(c).view(c, 1)).reshape(-1)
        return torch.argsort(index) if self.inverse else index

    def __call__(self, tensors, ctx):
        tensor = _one(tensors)
        if self.mismatch and (
                (self.ndim is not None and tensor.dim() != self.ndim) or
                tensor.dim() <= self.dim or
                tensor.shape[self.dim] % len(self.blocks)):
            raise ConversionError(self.mismatch.format(
                key=ctx.key, shape=list(tensor.shape)))
        index = self.order(tensor.shape[self.dim])
        return tensor.index_select(self.dim, index).contiguous()

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return self.what or (('undo ' if self.inverse else '') +
                             f'regroup blocks {list(self.blocks)}')

    def reverse(self) -> Op:
        return Regroup(self.blocks, self.dim, f'undo: {self.describe()}',
                       not self.inverse)


@dataclass(frozen=True)
class Reshape(Op):
    """``tensor.reshape(shape)``; the reverse reshapes back to ``source``
    when that shape is declared."""

    shape: Tuple[int, ...]
    source: Optional[Tuple[int, ...]] = None
    what: str = ''

    def __call__(self, tensors, ctx):
        return _one(tensors).reshape(self.shape)

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return self.what or f'reshape to {list(self.shape)}'

    def reverse(self) -> Optional[Op]:
        if self.source is None:
            return None
        return Reshape(self.source, self.shape, f'undo: {self.describe()}')


@dataclass(frozen=True)
class ToVector(Op):
    """``[1, ..., 1, C]`` -> ``[C]`` (same values); ``[C]`` is returned as
    it is. Any other shape is an error naming ``what``.

    Args:
        what (str): For the report; ``{shape}`` is replaced by the input's
            shape (``ctx.input_shape``).
        expected (str): The shapes accepted, for the error.
        ndim (int, optional): Only tensors of this rank change; others are
            returned unchanged (MinkowskiEngine ``[1, C]`` biases).
        leading (bool): The leading dims must be 1 (refuse otherwise);
            False: tensors whose leading dims are not all 1 are returned
            unchanged.
        reverse_shape (tuple[int], optional): Leading ones to restore.
    """

    what: str = ''
    expected: str = '[C] or [1, ..., 1, C]'
    ndim: Optional[int] = None
    leading: bool = True
    reverse_shape: Optional[Tuple[int, ...]] = None

    def __call__(self, tensors, ctx):
        tensor = _one(tensors)
        if tensor.dim() == 1 or (self.ndim is not None and
                                 tensor.dim() != self.ndim):
            return tensor
        if any(n != 1 for n in tensor.shape[:-1]):
            if not self.leading:
                return tensor
            raise ConversionError(
                f'{ctx.key} has shape {list(tensor.shape)}: '
                f'{self.expected}')
        return tensor.reshape(-1)

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        what = self.what or '[1, ..., 1, C] -> [C]'
        if ctx is not None and ctx.input_shape is not None:
            what = what.replace('{shape}', str(list(ctx.input_shape)))
        return what

    def reverse(self) -> Optional[Op]:
        if self.reverse_shape is None:
            return None
        return Reshape(self.reverse_shape + (-1, ), None,
                       f'undo: {self.describe()}')


@dataclass(frozen=True)
class Flatten(Op):
    """``[out, in, 1, 1]`` -> ``[out, in]`` (a 1x1 conv as a linear);
    other shapes are returned unchanged. The reverse adds the ``1, 1``."""

    what: str = '1x1 conv [out, in, 1, 1] -> linear [out, in]'

    def __call__(self, tensors, ctx):
        tensor = _one(tensors)
        if tensor.dim() == 4 and tuple(tensor.shape[2:]) == (1, 1):
            return tensor.flatten(1)
        return tensor

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return self.what

    def reverse(self) -> Op:
        return _Unflatten(f'undo: {self.what}')


@dataclass(frozen=True)
class _Unflatten(Op):
    """``[out, in]`` -> ``[out, in, 1, 1]`` (reverse of :class:`Flatten`)."""

    what: str = ''

    def __call__(self, tensors, ctx):
        tensor = _one(tensors)
        return tensor[:, :, None, None] if tensor.dim() == 2 else tensor

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return self.what

    def reverse(self) -> Op:
        return Flatten()


def _square(n: int) -> Optional[int]:
    """``g`` if ``n == g * g`` else None."""
    g = math.isqrt(n)
    return g if g * g == n else None


@dataclass(frozen=True)
class SliceTokens(Op):
    """Remove the leading non-patch slots of a ``(1, tokens, C)`` position
    embedding, keeping a square patch grid.

    Args:
        count (int | callable): Slots to remove, or ``count(ctx) -> int``
            (read from other source tensors, e.g. the class and register
            tokens of timm's ViTs).
        what (str): What the slots are (``'class-token'``).
        name (str): The step name the report shows.
        optional (bool): With ``count`` slots the rest is not square but
            the whole is: keep it as it is (timm ``no_embed_class``).
    """

    count: Any = 1
    what: str = 'class-token'
    name: str = 'strip_class_slot'
    optional: bool = False

    def slots(self, ctx: OpContext) -> int:
        """The number of slots to remove."""
        return self.count(ctx) if callable(self.count) else self.count

    def __call__(self, tensors, ctx):
        pos = _one(tensors)
        if pos.dim() != 3 or pos.shape[0] != 1:
            raise ConversionError(f'pos_embed has shape {list(pos.shape)}, '
                                  'not (1, tokens, C)')
        slots = self.slots(ctx)
        if self.optional:
            if slots and _square(pos.shape[1] - slots) is not None:
                return pos[:, slots:].clone()
            if _square(pos.shape[1]) is not None:
                return pos
            raise ConversionError(
                f'pos_embed {list(pos.shape)}: neither {pos.shape[1]} nor '
                f'{pos.shape[1]} - {slots} class/register slots is a square '
                'patch grid')
        if _square(pos.shape[1] - slots) is None:
            raise ConversionError(
                f'pos_embed {list(pos.shape)}: {pos.shape[1]} positions '
                f'minus {slots} {self.what} slot(s) is not a square patch '
                'grid')
        return pos[:, slots:].clone() if slots else pos

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        slots = self.slots(ctx) if ctx is not None else self.count
        grid = ''
        if ctx is not None and ctx.target_shape:
            g = _square(ctx.target_shape[1])
            grid = f', the {g}x{g} patch grid kept'
        elif ctx is not None and ctx.source_keys:
            # the grid left of the source tensor it was applied to
            pos = ctx.source.get(ctx.source_keys[0])
            g = _square(pos.shape[1] - slots) if pos is not None and \
                pos.dim() == 3 else None
            grid = f', the {g}x{g} patch grid kept' if g else ''
        return f'{self.name}: {slots} {self.what} slot(s) removed{grid}'


@dataclass(frozen=True)
class DensifySparseKernel(Op):
    """A MinkowskiEngine kernel -> a dense conv weight, exactly as
    ConvNeXt-V2's ``utils.remap_checkpoint_keys``: ``[k*k, in, out]`` ->
    ``[out, in, k, k]`` with ``weight[o, i, y, x] = kernel[x*k + y, i,
    o]``; a depthwise ``[k*k, C]`` -> ``[C, 1, k, k]`` likewise.
    ``what``: the report's line (default: the general one)."""

    what: str = ''

    def __call__(self, tensors, ctx):
        value = _one(tensors)
        key = ctx.source_keys[0] if ctx.source_keys else ctx.key
        if value.dim() == 3:
            volume, cin, cout = value.shape
            side = self._side(volume, key)
            return value.permute(2, 1, 0).reshape(
                cout, cin, side, side).transpose(3, 2).contiguous()
        if value.dim() == 2:
            volume, dim = value.shape
            side = self._side(volume, key)
            return value.permute(1, 0).reshape(
                dim, 1, side, side).transpose(3, 2).contiguous()
        raise ConversionError(
            f'{key} has shape {list(value.shape)}: not a MinkowskiEngine '
            'kernel ([k*k, in, out] or [k*k, C])')

    @staticmethod
    def _side(volume: int, key: str) -> int:
        side = _square(volume)
        if side is None:
            raise ConversionError(
                f'{key}: {volume} kernel offsets are not a square 2-d '
                'kernel: not a 2-d FCMAE encoder')
        return side

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return self.what or (
            'MinkowskiEngine kernel [k*k, in, out] / [k*k, C] -> dense '
            '[out, in, k, k] / [C, 1, k, k] (remap_checkpoint_keys)')


@dataclass(frozen=True)
class Fill(Op):
    """A new tensor shaped like the input, filled with ``value`` (FrozenBN
    statistics the source does not store). Its reverse drops the tensor,
    so it has none."""

    value: float
    what: str = ''

    def __call__(self, tensors, ctx):
        import torch
        like = _one(tensors)
        if self.value == 0:
            return torch.zeros_like(like)
        return torch.ones_like(like) - (1 - self.value)

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return self.what or f'filled with {self.value}'


@dataclass(frozen=True)
class Chunk(Op):
    """Split one tensor into ``parts`` equal chunks along ``dim`` (a fused
    ``qkv`` -> ``q``, ``k``, ``v``); the reverse concatenates."""

    parts: int
    dim: int = 0

    def __call__(self, tensors, ctx):
        tensor = _one(tensors)
        if tensor.shape[self.dim] % self.parts:
            raise ConversionError(
                f'{ctx.key}: {tensor.shape[self.dim]} does not split into '
                f'{self.parts} equal parts along dim {self.dim}')
        return tuple(t.contiguous()
                     for t in tensor.chunk(self.parts, self.dim))

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return f'split into {self.parts} along dim {self.dim}'

    def reverse(self) -> Op:
        return Concatenate(self.dim)


@dataclass(frozen=True)
class Concatenate(Op):
    """Concatenate the matched tensors along ``dim``, in the declared order
    (separate ``query``/``key``/``value`` -> fused ``qkv``); the reverse
    splits them again (equal parts)."""

    dim: int = 0
    arity = 0

    def __call__(self, tensors, ctx):
        import torch
        return torch.cat(list(tensors), self.dim)

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return f'concatenated along dim {self.dim}'

    def reverse(self) -> Optional[Op]:
        return None  # needs the number of parts: see Chunk


@dataclass(frozen=True)
class ScaleRows(Op):
    """``weight * scale`` per output row (fold a layer scale ``gamma`` into
    the preceding linear: ``(w, gamma) -> w * gamma[:, None]``, bias ``b *
    gamma``). Not reversible."""

    arity = 2

    def __call__(self, tensors, ctx):
        weight, scale = tensors
        view = scale.reshape((-1, ) + (1, ) * (weight.dim() - 1))
        return weight * view

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return 'layer scale folded into the weight (w * gamma)'


@dataclass(frozen=True)
class ResizeTable(Op):
    """Resize a ``((2W-1)^2, heads)`` relative position bias table to the
    ``length`` rows of the target window, bicubic, exactly as MMDetection's
    ``SwinTransformer.init_weights`` does. ``length`` None: the target
    module's shape (``ctx.target_shape``), when it is a ``((2W'-1)^2,
    heads)`` table of the same heads (any other is left as it is, for the
    module's shape check to report). ``what`` may name the windows before
    and after as ``{src}`` and ``{dst}`` (from ``ctx.input_shape`` and the
    length)."""

    length: Optional[int] = None
    what: str = ''

    def _length(self, table: Any, ctx: OpContext) -> Optional[int]:
        """The rows wanted: ``length``, or the target table's."""
        if self.length:
            return self.length
        want = ctx.target_shape
        if want is None or len(want) != 2 or table.dim() != 2 or \
                want[1] != table.shape[1] or _window(want[0]) is None:
            return None
        return want[0]

    def __call__(self, tensors, ctx):
        import torch.nn.functional as F
        table = _one(tensors)
        length = self._length(table, ctx)
        if length is None or table.dim() != 2 or table.shape[0] == length:
            return table
        rows, heads = table.shape
        s1, s2 = int(rows**0.5), int(length**0.5)
        resized = F.interpolate(
            table.permute(1, 0).reshape(1, heads, s1, s1), size=(s2, s2),
            mode='bicubic')
        return resized.view(heads, length).permute(1, 0).contiguous()

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        what = self.what or 'bicubic, as MMDetection SwinTransformer does'
        if ctx is not None and ('{src}' in what or '{dst}' in what):
            before = (ctx.input_shape or (None, ))[0]
            rows = self.length or (ctx.target_shape or (None, ))[0]
            what = what.replace('{src}', str(
                _window(before) if before else '?')).replace(
                    '{dst}', str(_window(rows) if rows else '?'))
        return 'resize_relative_position_table: ' + what


def _window(rows: int) -> Optional[int]:
    """``W`` with ``(2W - 1) ** 2 == rows``, or None."""
    side = _square(int(rows))
    return (side + 1) // 2 if side is not None and side % 2 else None


@dataclass(frozen=True)
class Chain(Op):
    """Several one-tensor ops in order; reversible when each is."""

    ops: Tuple[Op, ...]

    def __call__(self, tensors, ctx):
        tensor = _one(tensors)
        for op in self.ops:
            tensor = op([tensor], ctx)
        return tensor

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return '; '.join(op.describe(ctx) for op in self.ops)

    def reverse(self) -> Optional[Op]:
        back = [op.reverse() for op in reversed(self.ops)]
        return None if any(b is None for b in back) else Chain(tuple(back))


@dataclass(frozen=True)
class When(Op):
    """``op`` where ``test(ctx)`` holds, else ``otherwise`` (None: the
    tensor as it is): for a tensor that a rule's key matches in every file
    of a layout but that only some files need changed (the two-stage
    proposal classifier of a Deformable DETR). Not reversible (the test
    reads the source).

    Args:
        test (callable): ``test(ctx) -> bool`` (e.g. reads
            ``ctx.source``, the other tensors of the file).
        op (Op): Applied where ``test`` holds.
        otherwise (Op, optional): Applied elsewhere.
        what (str): What ``test`` tells, for :meth:`describe` without a
            context.
    """

    test: Callable[[OpContext], bool]
    op: Op
    otherwise: Optional[Op] = None
    what: str = ''

    def _chosen(self, ctx: OpContext) -> Optional[Op]:
        return self.op if self.test(ctx) else self.otherwise

    def __call__(self, tensors, ctx):
        chosen = self._chosen(ctx)
        return _one(tensors) if chosen is None else chosen(tensors, ctx)

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        if ctx is not None:
            chosen = self._chosen(ctx)
            return '' if chosen is None else chosen.describe(ctx)
        text = f'{self.op.describe()} where {self.what or "the test holds"}'
        if self.otherwise is not None:
            text += f', else {self.otherwise.describe()}'
        return text


#: Applies an op to a tensor outside any conversion (tests, examples).
def apply(op: Op, *tensors: Any, key: str = 'tensor') -> Any:
    """``op`` on ``tensors`` with a minimal context."""
    return op(list(tensors), OpContext(key, (key, )))



@dataclass(frozen=True)
class ResampleGrid(Op):
    """Resample a ``(1, g * g, C)`` patch-token position embedding to
    another square grid, bicubic (``align_corners=False``), exactly as
    :func:`mmconv.models.vit.interpolate_pos_embed` resizes it when the
    ViTDet input differs from the pre-training grid (timm's
    ``resample_abs_pos_embed`` and mmpretrain's ``resize_pos_embed`` do
    the same when they load a checkpoint).

    ``size`` None: the grid of the module it is loaded into
    (``ctx.target_shape``), when that is ``(1, G * G, C)`` with the same
    ``C``; anything else (other channels, a non-square grid, not a
    position embedding) is left as it is, for the module's shape check to
    refuse. Not reversible (resampling loses information).

    Args:
        size (int, optional): Grid side wanted.
        what (str): Why, for the report (after the grids).
    """

    size: Optional[int] = None
    what: str = ''

    def _sides(self, pos: Any, ctx: OpContext
               ) -> Optional[Tuple[int, int]]:
        """``(source side, wanted side)``, or None to leave ``pos``."""
        if pos.dim() != 3 or pos.shape[0] != 1:
            return None
        src = _square(pos.shape[1])
        if self.size:
            dst: Optional[int] = self.size
        else:
            want = ctx.target_shape
            if want is None or len(want) != 3 or want[0] != 1 or \
                    want[2] != pos.shape[2]:
                return None
            dst = _square(int(want[1]))
        if src is None or dst is None or src == dst:
            return None
        return src, dst

    def __call__(self, tensors, ctx):
        import torch.nn.functional as F
        pos = _one(tensors)
        sides = self._sides(pos, ctx)
        if sides is None:
            return pos
        src, dst = sides
        channels = pos.shape[2]
        grid = pos.reshape(1, src, src, channels).permute(0, 3, 1, 2)
        if grid.element_size() < 4 or not grid.is_floating_point():
            grid = grid.float()  # 16-bit: bicubic in float32
        grid = F.interpolate(grid, size=(dst, dst), mode='bicubic',
                             align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(
            1, dst * dst, channels).to(pos.dtype).contiguous()

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        grids = ''
        if ctx is not None and ctx.input_shape is not None and \
                len(ctx.input_shape) == 3:
            src = _square(int(ctx.input_shape[1]))
            want = self.size or (
                _square(int(ctx.target_shape[1])) if ctx.target_shape
                and len(ctx.target_shape) == 3 else None)
            grids = f' {src}x{src} -> {want}x{want} patch grid,'
        what = self.what or ('as ViTDet resizes it at run time (timm / '
                             'mmpretrain do it at load time)')
        return (f'resample_pos_embed:{grids} bicubic, align_corners=False, '
                f'{what}')


__all__.append('ResampleGrid')


@dataclass(frozen=True)
class ZeroPart(Op):
    """Zero part ``index`` of ``parts`` equal parts along ``dim`` (the K
    third of a fused ``qkv`` bias that DINOv3 masks out with its
    ``bias_mask`` buffer: its effective value is zero). The input is
    returned as it is when that part is zero already. Not reversible (the
    stored values are lost).

    Args:
        index (int): The part zeroed.
        parts (int): Equal parts along ``dim``.
        dim (int): Dimension. Defaults to 0.
        what (str): For the report.
    """

    index: int
    parts: int
    dim: int = 0
    what: str = ''

    def __call__(self, tensors, ctx):
        tensor = _one(tensors)
        size = tensor.shape[self.dim]
        if size % self.parts:
            raise ConversionError(
                f'{ctx.key}: {size} rows do not split into {self.parts} '
                f'equal parts along dim {self.dim}')
        step = size // self.parts
        part = tensor.narrow(self.dim, self.index * step, step)
        if not bool(part.any()):
            return tensor
        out = tensor.clone()
        out.narrow(self.dim, self.index * step, step).zero_()
        return out

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return self.what or (f'part {self.index} of {self.parts} along dim '
                             f'{self.dim} set to zero')


@dataclass(frozen=True)
class ConcatenateWithZeros(Op):
    """Concatenate the matched tensors along ``dim`` with a zero block of
    the same shape inserted at position ``at`` (separate ``q`` and ``v``
    biases -> fused ``[q; 0; v]`` ``qkv`` bias, the key bias being zero).
    Not reversible here (the zero block is dropped by a split).

    Args:
        at (int): Position of the zero block among the outputs' blocks.
        dim (int): Dimension. Defaults to 0.
        what (str): For the report.
    """

    at: int = 1
    dim: int = 0
    what: str = ''
    arity = 0

    def __call__(self, tensors, ctx):
        import torch
        parts = list(tensors) if isinstance(tensors, (list, tuple)) \
            else [tensors]
        shapes = {tuple(t.shape) for t in parts}
        if len(shapes) != 1:
            raise ConversionError(
                f'{ctx.key}: parts of shapes {sorted(shapes)} cannot be '
                'concatenated with a zero block of one shape')
        parts.insert(self.at, torch.zeros_like(parts[0]))
        return torch.cat(parts, self.dim)

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return self.what or (f'concatenated along dim {self.dim} with a '
                             f'zero block at position {self.at}')


@dataclass(frozen=True)
class ZeroBias(Op):
    """A zero bias ``(rows,)`` for a ``(rows, ...)`` weight (a layout that
    stores no bias where the model has one that is zero: timm's DINOv3
    without q/v bias). Used in a format's ``derive`` rules; not
    reversible (the bias is dropped)."""

    what: str = ''

    def __call__(self, tensors, ctx):
        import torch
        weight = _one(tensors)
        return torch.zeros(weight.shape[0], dtype=weight.dtype,
                           device=weight.device)

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return self.what or 'zero bias'


@dataclass(frozen=True)
class FitsTarget(Op):
    """A check of a converted tensor against the module it is loaded into
    (``ctx.target_shape``, a family's ``fit`` rules): refuse when the
    module has no such tensor (``missing``) or another shape
    (``mismatch``), in one line. Never changes the tensor.

    Args:
        missing (str): Error when the module lacks the key; ``{key}`` and
            ``{shape}`` (the tensor's) are filled in; empty: allowed.
        mismatch (str): Error on another shape; ``{key}``, ``{shape}``
            and ``{target}`` are filled in.
        allow_zero (bool): A module without the key is fine when the
            tensor is all zeros (nothing is lost, e.g. a zero bias).
    """

    missing: str = '{key} {shape} is not in the model'
    mismatch: str = '{key} {shape} vs {target} in the model'
    allow_zero: bool = False

    def __call__(self, tensors, ctx):
        tensor = _one(tensors)
        shape = list(tensor.shape)
        if ctx.target_shape is None:
            if not self.missing:
                return tensor
            if self.allow_zero and not bool(tensor.any()):
                return tensor
            raise ConversionError(self.missing.format(key=ctx.key,
                                                      shape=shape))
        if tuple(ctx.target_shape) != tuple(tensor.shape):
            raise ConversionError(self.mismatch.format(
                key=ctx.key, shape=shape, target=list(ctx.target_shape)))
        return tensor

    def describe(self, ctx: Optional['OpContext'] = None) -> str:
        return 'checked against the model'


__all__ += ['ZeroPart', 'ConcatenateWithZeros', 'ZeroBias', 'FitsTarget']
