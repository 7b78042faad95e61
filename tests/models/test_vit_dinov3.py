# Copyright (c) mmconv contributors. All rights reserved.
"""ViTDet with DINOv3's RoPE, class and register tokens: equivalence with
timm's DINOv3 (which computes the official ``get_intermediate_layers``),
and what the windowed ViTDet mode does with the tokens and RoPE."""
from typing import Dict, Tuple

import pytest
import torch

timm = pytest.importorskip('timm')

from mmconv.models import ViTDet  # noqa: E402
from mmconv.models.vit import rope_periods  # noqa: E402

# timm name -> (embed_dim, num_heads, ViTDet mlp, mlp_ratio); the widths of
# the released models (tiny widths keep the structure: 'tiny' rows).
VARIANTS: Dict[str, Tuple[str, dict, dict]] = {
    'S': ('vit_small_patch16_dinov3_qkvb', dict(),
          dict(embed_dim=384, num_heads=6, mlp='mlp', mlp_ratio=4)),
    'S+': ('vit_small_plus_patch16_dinov3_qkvb', dict(),
           dict(embed_dim=384, num_heads=6, mlp='swiglu_unpacked',
                mlp_ratio=4)),
    'B': ('vit_base_patch16_dinov3_qkvb', dict(),
          dict(embed_dim=768, num_heads=12, mlp='mlp', mlp_ratio=4)),
    'tiny-7B': ('vit_7b_patch16_dinov3',
                dict(embed_dim=64, num_heads=2),
                dict(embed_dim=64, num_heads=2, mlp='swiglu_unpacked',
                     mlp_ratio=2, qkv_bias=False)),
}
# the pre-training size and a non-square one (not a multiple of a window)
SIZES = [(224, 224), (160, 96)]


def build_pair(variant: str, depth: int = 2, seed: int = 0,
               **vitdet_kwargs) -> Tuple[torch.nn.Module, ViTDet]:
    """A random timm DINOv3 model and a global-attention ViTDet holding
    its weights (timm names -> ViTDet names, ``[q; 0; v]`` qkv bias)."""
    name, timm_kwargs, args = VARIANTS[variant]
    torch.manual_seed(seed)
    ref = timm.create_model(name, pretrained=False, depth=depth,
                            num_classes=0, **timm_kwargs).eval()
    with torch.no_grad():
        for param in ref.parameters():
            param.normal_(0, 0.05)
    kwargs = dict(patch_size=16, depth=depth, layer_scale=1e-5,
                  norm_cfg=dict(type='LN', eps=1e-5), use_abs_pos=False,
                  use_rope=True, with_cls_token=True, num_reg_tokens=4,
                  final_norm=True, window_size=0, global_attn_indexes=(),
                  use_rel_pos=False)
    kwargs.update(args)
    kwargs.update(vitdet_kwargs)
    model = ViTDet(**kwargs).eval()
    state = {}
    for key, value in ref.state_dict().items():
        key = key.replace('gamma_1', 'ls1.gamma').replace(
            'gamma_2', 'ls2.gamma')
        state[key] = value
    for i in range(depth):
        q = state.pop(f'blocks.{i}.attn.q_bias', None)
        v = state.pop(f'blocks.{i}.attn.v_bias', None)
        if q is not None:
            state[f'blocks.{i}.attn.qkv.bias'] = torch.cat(
                [q, torch.zeros_like(q), v])
    state['rope_embed.periods'] = model.rope_embed.periods
    model.load_state_dict(state, strict=True)
    return ref, model


def reference(ref: torch.nn.Module, x: torch.Tensor,
              index: int) -> torch.Tensor:
    """timm's normed output of block ``index`` as a ``(B, C, h, w)`` map
    (the official ``get_intermediate_layers(n=[index], reshape=True)``)."""
    with torch.no_grad():
        return ref.forward_intermediates(
            x, indices=[index], norm=True, output_fmt='NCHW',
            intermediates_only=True)[0]


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('variant', list(VARIANTS))
def test_global_mode_equals_official_function(variant, size):
    ref, model = build_pair(variant)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out, = model(x)
    want = reference(ref, x, 1)
    assert out.shape == want.shape == (2, model.embed_dim, size[0] // 16,
                                       size[1] // 16)
    assert (out - want).abs().max().item() < 1e-4


def test_out_indices_are_the_official_intermediate_layers():
    ref, model = build_pair('S', depth=3, out_indices=(0, -1))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        first, last = model(x)
    assert (first - reference(ref, x, 0)).abs().max().item() < 1e-4
    assert (last - reference(ref, x, 2)).abs().max().item() < 1e-4


def test_tokens_and_periods_are_module_state():
    model = ViTDet(embed_dim=64, num_heads=4, depth=1, use_abs_pos=False,
                   use_rope=True, with_cls_token=True, num_reg_tokens=4,
                   global_attn_indexes=(), window_size=0, use_rel_pos=False)
    state = model.state_dict()
    assert state['cls_token'].shape == (1, 1, 64)
    assert state['reg_token'].shape == (1, 4, 64)
    assert 'pos_embed' not in state
    assert torch.equal(state['rope_embed.periods'], rope_periods(16))
    # a checkpoint's periods replace the computed ones and are used
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before, = model(x)
        periods = state['rope_embed.periods'].to(torch.bfloat16).float()
        model.load_state_dict(dict(state, **{'rope_embed.periods': periods}))
        after, = model(x)
    assert torch.equal(model.rope_embed.periods, periods)
    assert not torch.equal(before, after)


def test_rope_periods_formula():
    # DINOv3 RopePositionEmbedding: base ** (2 * arange(D/4) / (D/2))
    periods = rope_periods(64, 100.0)
    assert periods.shape == (16, )
    assert periods[0] == 1.0
    assert torch.allclose(periods[1:] / periods[:-1],
                          torch.full((15, ), 100.0**(1 / 16)))
    with pytest.raises(ValueError, match='divisible by 4'):
        rope_periods(66)


def _windowed(model: ViTDet, window: int) -> ViTDet:
    """The same weights with every block windowed."""
    for block in model.blocks:
        block.window_size = window
    return model


@pytest.mark.parametrize('window', [6, 16])
def test_window_holding_the_grid_is_global(window):
    # one window over the whole 6x6 grid, or a padded one (padding masked):
    # every patch sees every patch and the tokens: the global function
    ref, model = build_pair('S', depth=2)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        want, = model(x)
        got, = _windowed(model, window)(x)
    assert (got - want).abs().max().item() < 1e-4
    assert (got - reference(ref, x, 1)).abs().max().item() < 1e-4


def test_windowed_block_is_local_except_through_tokens():
    # after one windowed block, a patch in another window does not see a
    # change (the tokens attend globally but patches read their input)
    _, model = build_pair('S', depth=1)
    _windowed(model, 4)
    x = torch.randn(1, 3, 128, 128)  # 8x8 grid, four 4x4 windows
    y = x.clone()
    y[:, :, :64, :64] += 1.0  # window (0, 0)
    with torch.no_grad():
        a, = model(x)
        b, = model(y)
    changed = (a - b).abs().amax(dim=1)[0]
    assert changed[:4, :4].max() > 1e-3
    assert changed[4:, 4:].max() == 0
    assert changed[:4, 4:].max() == 0


def test_windowed_block_is_not_global_in_general():
    ref, model = build_pair('S', depth=2)
    x = torch.randn(1, 3, 128, 128)
    want = reference(ref, x, 1)
    with torch.no_grad():
        exact = (model(x)[0] - want).abs().max().item()
        got, = _windowed(model, 4)(x)
    assert (got - want).abs().max().item() > 100 * exact + 1e-5


def test_windowed_with_rel_pos_and_prefix_runs():
    model = ViTDet(embed_dim=64, num_heads=4, depth=2, use_abs_pos=False,
                   use_rope=True, with_cls_token=True, num_reg_tokens=4,
                   window_size=4, global_attn_indexes=(1, ),
                   use_rel_pos=True, img_size=112, drop_path_rate=0.1)
    x = torch.randn(2, 3, 112, 80, requires_grad=True)
    out, = model(x)
    assert out.shape == (2, 64, 7, 5)
    out.sum().backward()
    assert model.cls_token.grad is not None
    assert model.reg_token.grad is not None
    assert model.blocks[0].attn.rel_pos_h.grad is not None


def test_frozen_backbone_stays_frozen():
    model = ViTDet(embed_dim=32, num_heads=2, depth=1, use_abs_pos=False,
                   use_rope=True, with_cls_token=True, num_reg_tokens=1,
                   global_attn_indexes=(), drop_path_rate=0.5, frozen=True)
    model.train()
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())


def test_swiglu_unpacked_is_timm_swiglu():
    from timm.layers import SwiGLU
    from mmconv.models.vit import SwiGLUUnpacked
    torch.manual_seed(0)
    ref = SwiGLU(32, 48)
    mine = SwiGLUUnpacked(32, 48)
    mine.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 32)
    assert torch.allclose(mine(x), ref(x), atol=1e-6)


def test_bad_options():
    with pytest.raises(ValueError, match='out_indices'):
        ViTDet(embed_dim=32, num_heads=2, depth=2, out_indices=(2, ),
               global_attn_indexes=())
    with pytest.raises(ValueError, match='num_reg_tokens'):
        ViTDet(embed_dim=32, num_heads=2, depth=1, num_reg_tokens=-1,
               global_attn_indexes=())
