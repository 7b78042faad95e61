# Copyright (c) mmconv contributors. All rights reserved.
"""The op library: each op against an independent definition of what it
must compute, and every reversible op undone by its reverse."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmconv.errors import ConversionError
from mmconv.ops import (Chain, Chunk, Concatenate, DensifySparseKernel, Fill,
                        Flatten, OpContext, Permute, Regroup, Reshape,
                        ResizeTable, ScaleRows, SelectRows, SliceTokens,
                        ToVector, apply)

UNFOLD = (0, 2, 1, 3)


def test_regroup_is_the_unfold_order_of_a_2x2_patch_merging():
    """A merging linear regrouped to nn.Unfold order computes, on
    F.unfold's patches, what the official one computes on the official
    concatenation [x(0,0), x(1,0), x(0,1), x(1,1)]."""
    torch.manual_seed(0)
    c = 6
    x = torch.randn(1, c, 2, 2, dtype=torch.float64)
    official = torch.cat([x[0, :, 0, 0], x[0, :, 1, 0], x[0, :, 0, 1],
                          x[0, :, 1, 1]])
    unfolded = F.unfold(x, kernel_size=2, stride=2).reshape(-1)
    weight = torch.randn(2 * c, 4 * c, dtype=torch.float64)
    norm = torch.randn(4 * c, dtype=torch.float64)
    w = apply(Regroup(UNFOLD, dim=1), weight)
    n = apply(Regroup(UNFOLD), norm)
    torch.testing.assert_close(w @ unfolded, weight @ official)
    torch.testing.assert_close(n * unfolded, (norm * official)[
        Regroup(UNFOLD).order(4 * c)])
    assert torch.equal(apply(Regroup(UNFOLD).reverse(), n), norm)


def test_regroup_refuses_channels_that_do_not_split():
    with pytest.raises(ConversionError, match='4 equal blocks'):
        apply(Regroup(UNFOLD), torch.zeros(6))


def test_densify_sparse_kernel_element_by_element():
    """weight[o, i, y, x] = kernel[x*k + y, i, o] (ConvNeXt-V2
    remap_checkpoint_keys); depthwise [k*k, C] -> [C, 1, k, k]."""
    k, cin, cout = 3, 4, 5
    kernel = torch.randn(k * k, cin, cout)
    dense = apply(DensifySparseKernel(), kernel)
    assert dense.shape == (cout, cin, k, k)
    for o in range(cout):
        for i in range(cin):
            for y in range(k):
                for x in range(k):
                    assert dense[o, i, y, x] == kernel[x * k + y, i, o]
    dw = torch.randn(k * k, cin)
    dense = apply(DensifySparseKernel(), dw)
    assert dense.shape == (cin, 1, k, k)
    assert dense[2, 0, 1, 0] == dw[0 * k + 1, 2]
    with pytest.raises(ConversionError, match='not a square 2-d kernel'):
        apply(DensifySparseKernel(), torch.randn(8, 2))
    with pytest.raises(ConversionError, match='not a MinkowskiEngine'):
        apply(DensifySparseKernel(), torch.randn(9))


def test_select_rows_gathers_checks_and_reverses_permutations():
    t = torch.arange(12.).reshape(4, 3)
    op = SelectRows((2, 0, 3, 1), 4, 'perm')
    out = apply(op, t)
    assert torch.equal(out[0], t[2]) and torch.equal(out[3], t[1])
    assert torch.equal(apply(op.reverse(), out), t)
    dropping = SelectRows((1, 3), 4, mismatch='{key}: {rows} != {expected}')
    assert dropping.reverse() is None
    with pytest.raises(ConversionError, match='tensor: 5 != 4'):
        apply(dropping, torch.zeros(5, 3))


def test_to_vector_flatten_and_their_reverses():
    grn = torch.randn(1, 1, 1, 7)
    op = ToVector(reverse_shape=(1, 1, 1))
    assert torch.equal(apply(op, grn), grn.reshape(-1))
    assert torch.equal(apply(op.reverse(), apply(op, grn)), grn)
    vec = torch.randn(7)
    assert apply(op, vec) is vec  # nothing to change
    with pytest.raises(ConversionError, match=r'\[2, 7\]'):
        apply(op, torch.randn(2, 7))
    conv = torch.randn(8, 5, 1, 1)
    assert torch.equal(apply(Flatten(), conv), conv.flatten(1))
    assert torch.equal(apply(Flatten().reverse(), apply(Flatten(), conv)),
                       conv)
    three = torch.randn(8, 5, 3, 3)
    assert apply(Flatten(), three) is three


def test_slice_tokens_keeps_a_square_grid():
    pos = torch.randn(1, 1 + 16, 8)
    assert torch.equal(apply(SliceTokens(1), pos), pos[:, 1:])
    with pytest.raises(ConversionError, match='not a square patch grid'):
        apply(SliceTokens(2), pos)
    optional = SliceTokens(5, optional=True)
    square = torch.randn(1, 16, 8)
    assert apply(optional, square) is square
    ctx = OpContext('pos_embed', ('pos_embed', ),
                    {'cls_token': torch.zeros(1, 1, 8),
                     'reg_token': torch.zeros(1, 4, 8)})

    def prefix(c):
        return sum(v.shape[1] for k, v in c.source.items()
                   if k.endswith('_token'))

    pos = torch.randn(1, 21, 8)
    out = SliceTokens(prefix)([pos], ctx)
    assert torch.equal(out, pos[:, 5:])
    assert SliceTokens(prefix).slots(ctx) == 5


def test_fill_gives_frozen_bn_statistics():
    w = torch.randn(4)
    assert torch.equal(apply(Fill(0.0), w), torch.zeros(4))
    assert torch.equal(apply(Fill(1 - 1e-5), w), torch.ones(4) - 1e-5)


def test_scale_rows_folds_a_layer_scale():
    torch.manual_seed(1)
    w, gamma, x = torch.randn(6, 4), torch.randn(6), torch.randn(4)
    folded = apply(ScaleRows(), w, gamma)
    torch.testing.assert_close(folded @ x, gamma * (w @ x))
    assert ScaleRows().reverse() is None


def test_resize_table_is_mmdetections_bicubic_resize():
    """Same formula as MMDetection SwinTransformer.init_weights; a constant
    table stays constant; the target length comes from the context."""
    table = torch.randn(13 * 13, 3)
    grid = table.permute(1, 0).reshape(1, 3, 13, 13)
    want = F.interpolate(grid, size=(11, 11), mode='bicubic').view(
        3, 121).permute(1, 0)
    got = ResizeTable()([table], OpContext('t', target_shape=(121, 3)))
    assert torch.equal(got, want.contiguous())
    assert ResizeTable(169)([table], OpContext('t')) is table
    const = torch.full((169, 2), 0.5)
    torch.testing.assert_close(ResizeTable(121)([const], OpContext('t')),
                               torch.full((121, 2), 0.5))


def test_chunk_and_concatenate_are_inverse():
    q, k, v = (torch.randn(5, 5) for _ in range(3))
    qkv = apply(Concatenate(0), q, k, v)
    assert torch.equal(qkv, torch.cat([q, k, v]))
    back = apply(Chunk(3), qkv)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v)))
    assert torch.equal(apply(Chunk(3).reverse(), *back), qkv)
    with pytest.raises(ConversionError, match='3 equal parts'):
        apply(Chunk(3), torch.zeros(4))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_every_reversible_op_is_undone_by_its_reverse(rows, cols, seed):
    """Property: op.reverse()(op(t)) == t for every op with a reverse."""
    g = torch.Generator().manual_seed(seed)
    perm = tuple(torch.randperm(rows, generator=g).tolist())
    t = torch.randn(rows * 4, cols, generator=g)
    ops = [
        (SelectRows(perm, rows), t[:rows]),
        (Permute((1, 0)), t),
        (Regroup(UNFOLD), t),
        (Regroup(UNFOLD, dim=1), t.T.contiguous()),
        (Reshape((cols, rows * 4), (rows * 4, cols)), t),
        (ToVector(reverse_shape=(1, )), t[:1]),
        (Flatten(), t[:, :, None, None]),
        (Chain((Permute((1, 0)), Regroup(UNFOLD, dim=1))), t),
    ]
    for op, tensor in ops:
        back = op.reverse()
        assert back is not None, op
        assert torch.equal(apply(back, apply(op, tensor)), tensor), op
        assert op.describe()
