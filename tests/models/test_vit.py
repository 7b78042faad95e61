# Copyright (c) mmconv contributors. All rights reserved.
"""ViTDet backbone and SimpleFPN neck: numerical equivalence with timm's
VisionTransformer (an independent implementation, random weights) for the
MAE / DINO / MoCo v3 / iBOT layout, LayerScale, DINOv2 with and without
register tokens and SwiGLU; windowed attention, relative positions,
position-embedding interpolation, stochastic depth; and an MMDetection Mask
R-CNN built from a config dict, trained one step and run in predict mode
for patch 16 and patch 14."""
from typing import Dict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# Importing mmconv.models registers ViTDet, SimpleFPN and LN2d.
from mmconv.models import (LayerNorm2d, SimpleFPN, ViTDet,
                           simple_fpn_strides)
from mmconv.models.vit import decomposed_rel_pos_bias

try:  # timm is the independent reference (test-only, timm==1.0.31).
    from timm.layers import SwiGLUPacked
    from timm.models.vision_transformer import VisionTransformer
except ImportError:  # pragma: no cover - only the timm tests are skipped
    SwiGLUPacked = VisionTransformer = None
requires_timm = pytest.mark.skipif(
    VisionTransformer is None, reason='timm (the reference) is not installed')

# Largest relative error (max |ours - timm| / max |timm|) seen per variant.
MAX_REL_ERR: Dict[str, float] = {}

# name: (timm VisionTransformer kwargs, ViTDet kwargs beyond the shared ones)
TIMM_VARIANTS = {
    # MAE, DINO, MoCo v3, iBOT: class token with a pos_embed slot.
    'vit': (dict(), dict()),
    'vit-no-qkv-bias': (dict(qkv_bias=False), dict(qkv_bias=False)),
    'layer-scale': (dict(init_values=0.1), dict(layer_scale=0.1)),
    # DINOv2 (no registers): patch 14, LayerScale, class-token slot.
    'dinov2': (dict(patch_size=14, img_size=56, init_values=1e-5),
               dict(patch_size=14, img_size=56, layer_scale=1e-5)),
    # DINOv2 with registers as timm builds it: no pos_embed slot at all.
    'dinov2-reg4': (dict(patch_size=14, img_size=56, init_values=1e-5,
                         reg_tokens=4, no_embed_class=True),
                    dict(patch_size=14, img_size=56, layer_scale=1e-5)),
    # DINOv2 giant layout: packed SwiGLU (timm SwiGLUPacked), registers.
    'dinov2-swiglu-reg4': (dict(patch_size=14, img_size=56, init_values=1e-5,
                                reg_tokens=4, no_embed_class=True,
                                mlp_layer='SwiGLUPacked',
                                act_layer=torch.nn.SiLU,
                                mlp_ratio=2.66667 * 2),
                           dict(patch_size=14, img_size=56, layer_scale=1e-5,
                                mlp='swiglu', mlp_ratio=2.66667 * 2)),
}
EMBED, DEPTH, HEADS = 96, 3, 4


def _build_timm(kwargs: dict, seed: int) -> 'VisionTransformer':
    """A tiny timm ViT with random weights (LayerScale and LayerNorm
    parameters randomised too, so no branch is negligible)."""
    torch.manual_seed(seed)
    args = dict(img_size=64, patch_size=16, embed_dim=EMBED, depth=DEPTH,
                num_heads=HEADS, num_classes=10)
    args.update(kwargs)
    if args.get('mlp_layer') == 'SwiGLUPacked':
        args['mlp_layer'] = SwiGLUPacked
    model = VisionTransformer(**args).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith('gamma') or ('norm' in name
                                          and name.endswith('weight')):
                param.uniform_(0.5, 1.5)
            elif name.endswith('bias'):
                param.normal_(0, 0.1)
    return model


def _timm_pos_prefix(model: 'VisionTransformer') -> int:
    """Class/register slots at the start of timm's pos_embed."""
    return 0 if model.no_embed_class else model.num_prefix_tokens


def timm_to_vitdet(model: 'VisionTransformer') -> Dict[str, torch.Tensor]:
    """Test-only stand-in for the converter: drop the tokens and the head,
    strip pos_embed's class-token slot(s); every other name is kept."""
    prefix = _timm_pos_prefix(model)
    out = {}
    for key, value in model.state_dict().items():
        if key in ('cls_token', 'reg_token') or key.startswith('head.'):
            continue
        if key == 'pos_embed':
            value = value[:, prefix:]
        out[key] = value
    return out


def timm_patch_features(model: 'VisionTransformer',
                        img: torch.Tensor) -> torch.Tensor:
    """timm's own modules on the patch tokens only (no class or register
    tokens), as a ``(B, C, h, w)`` map."""
    x = model.patch_embed(img)
    x = x + model.pos_embed[:, _timm_pos_prefix(model):]
    x = model.norm(model.blocks(model.norm_pre(x)))
    grid = model.patch_embed.grid_size
    return x.reshape(x.shape[0], *grid, -1).permute(0, 3, 1, 2)


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@requires_timm
@pytest.mark.parametrize('variant', list(TIMM_VARIANTS))
def test_equivalent_to_timm(variant):
    timm_kwargs, vitdet_kwargs = TIMM_VARIANTS[variant]
    ref_model = _build_timm(timm_kwargs, seed=0)
    args = dict(img_size=64, patch_size=16, embed_dim=EMBED, depth=DEPTH,
                num_heads=HEADS, window_size=0, global_attn_indexes=(),
                use_rel_pos=False, final_norm=True)
    args.update(vitdet_kwargs)
    model = ViTDet(**args).eval()
    state = timm_to_vitdet(ref_model)
    assert set(state) == set(model.state_dict())
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    size = args['img_size']
    gen = torch.Generator().manual_seed(1)
    img = torch.randn(2, 3, size, size, generator=gen)
    with torch.no_grad():
        (ours, ) = model(img)
        fused = timm_patch_features(ref_model, img)
        # timm's explicit softmax(q k^T) path as well as its SDPA one.
        for block in ref_model.blocks:
            block.attn.fused_attn = False
        explicit = timm_patch_features(ref_model, img)
    grid = size // args['patch_size']
    assert ours.shape == fused.shape == (2, EMBED, grid, grid)
    for path, ref in (('sdpa', fused), ('explicit', explicit)):
        err = _rel_err(ours, ref)
        MAX_REL_ERR[f'{variant}-{path}'] = err
        print(f'\n{variant} vs timm ({path} attention): max relative '
              f'error {err:.2e}')
        assert err < 1e-5


def test_swiglu_and_layer_scale_names():
    # timm's rule: fc1 width int(C * mlp_ratio) = int(48 * 5.33334) = 256.
    model = ViTDet(img_size=56, patch_size=14, embed_dim=48, depth=1,
                   num_heads=4, mlp='swiglu', mlp_ratio=2.66667 * 2,
                   layer_scale=1e-5, window_size=0, global_attn_indexes=(),
                   use_rel_pos=False)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {
        'patch_embed.proj.weight': (48, 3, 14, 14),
        'patch_embed.proj.bias': (48, ),
        'pos_embed': (1, 16, 48),
        'blocks.0.norm1.weight': (48, ),
        'blocks.0.norm1.bias': (48, ),
        'blocks.0.attn.qkv.weight': (144, 48),
        'blocks.0.attn.qkv.bias': (144, ),
        'blocks.0.attn.proj.weight': (48, 48),
        'blocks.0.attn.proj.bias': (48, ),
        'blocks.0.ls1.gamma': (48, ),
        'blocks.0.norm2.weight': (48, ),
        'blocks.0.norm2.bias': (48, ),
        'blocks.0.mlp.fc1.weight': (256, 48),
        'blocks.0.mlp.fc1.bias': (256, ),
        'blocks.0.mlp.fc2.weight': (48, 128),
        'blocks.0.mlp.fc2.bias': (48, ),
        'blocks.0.ls2.gamma': (48, ),
    }
    assert torch.all(model.blocks[0].ls1.gamma == 1e-5)
    with pytest.raises(ValueError, match='even'):
        ViTDet(embed_dim=64, num_heads=4, depth=1, mlp='swiglu',
               mlp_ratio=97 / 64, global_attn_indexes=())


def test_rel_pos_names_and_sizes():
    model = ViTDet(img_size=64, patch_size=16, embed_dim=64, depth=2,
                   num_heads=4, window_size=3, global_attn_indexes=(1, ),
                   use_rel_pos=True, rel_pos_img_size=128)
    sd = model.state_dict()
    # windowed block: sized for the window; global: for rel_pos_img_size.
    assert sd['blocks.0.attn.rel_pos_h'].shape == (5, 16)
    assert sd['blocks.0.attn.rel_pos_w'].shape == (5, 16)
    assert sd['blocks.1.attn.rel_pos_h'].shape == (15, 16)
    assert sd['blocks.1.attn.rel_pos_w'].shape == (15, 16)
    assert not any(k.startswith('norm.') for k in sd)  # final_norm=False
    assert all(not sd[k].any() for k in sd if 'rel_pos' in k)  # zero init


def test_decomposed_rel_pos_bias_brute_force():
    torch.manual_seed(0)
    height, width, dim = 3, 4, 5
    q = torch.randn(2, 3, height * width, dim)
    rel_h = torch.randn(2 * height - 1, dim)
    rel_w = torch.randn(2 * width - 1, dim)
    bias = decomposed_rel_pos_bias(q, rel_h, rel_w, (height, width))
    ref = torch.zeros(2, 3, height * width, height * width)
    for i in range(height):
        for j in range(width):
            for k in range(height):
                for m in range(width):
                    qv = q[:, :, i * width + j]
                    ref[:, :, i * width + j, k * width + m] = (
                        qv @ rel_h[i - k + height - 1] +
                        qv @ rel_w[j - m + width - 1])
    torch.testing.assert_close(bias, ref)
    # A table sized for another grid is resized linearly (ViTDet).
    bias = decomposed_rel_pos_bias(q, torch.randn(9, dim), rel_w,
                                   (height, width))
    assert bias.shape == ref.shape


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'rel_pos' in name:
                param.normal_(0, 0.5)


def test_windowed_rel_pos_at_other_resolution():
    model = ViTDet(img_size=64, patch_size=16, embed_dim=64, depth=3,
                   num_heads=4, window_size=3, global_attn_indexes=(1, ),
                   use_rel_pos=True, drop_path_rate=0.0)
    _randomise(model)
    img = torch.randn(2, 3, 100, 76)  # not multiples of the patch size
    (out, ) = model(img)
    # padded to 112 x 80 -> 7 x 5 tokens; windows pad that to 9 x 6.
    assert out.shape == (2, 64, 7, 5)
    assert torch.isfinite(out).all()
    # The backbone pads with zeros itself: same as padding beforehand.
    (padded, ) = model(F.pad(img, (0, 4, 0, 12)))
    torch.testing.assert_close(out, padded)
    out.square().mean().backward()
    for block in model.blocks:
        assert block.attn.rel_pos_h.grad.abs().sum() > 0
        assert block.attn.rel_pos_w.grad.abs().sum() > 0
    assert model.pos_embed.grad.abs().sum() > 0


def test_window_attention_is_local():
    """One windowed block (no global mixing): changing one patch changes
    only the tokens of its window."""
    model = ViTDet(img_size=80, patch_size=16, embed_dim=32, depth=1,
                   num_heads=2, window_size=2, global_attn_indexes=(),
                   use_rel_pos=True).eval()
    _randomise(model)
    img = torch.randn(1, 3, 80, 80)  # 5 x 5 tokens, windows padded to 6 x 6
    changed = img.clone()
    changed[..., 64:80, 16:32] += 1.0  # token (4, 1): window rows 4-5, 0-1
    with torch.no_grad():
        (a, ), (b, ) = model(img), model(changed)
    diff = (a - b).abs().amax(dim=1)[0] > 1e-6
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[4:, 0:2] = True
    assert torch.equal(diff, expected)


def test_full_window_equals_global():
    torch.manual_seed(0)
    glob = ViTDet(img_size=64, patch_size=16, embed_dim=32, depth=2,
                  num_heads=2, window_size=0, global_attn_indexes=(),
                  use_rel_pos=True).eval()
    win = ViTDet(img_size=64, patch_size=16, embed_dim=32, depth=2,
                 num_heads=2, window_size=4, global_attn_indexes=(),
                 use_rel_pos=True).eval()
    _randomise(glob)
    win.load_state_dict(glob.state_dict())  # tables both 7 rows
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(win(img)[0], glob(img)[0])


def test_pos_embed_interpolation():
    model = ViTDet(img_size=64, patch_size=16, embed_dim=32, depth=0,
                   num_heads=2, global_attn_indexes=()).eval()
    pos = model.pos_embed.detach()
    grid = pos.reshape(1, 4, 4, 32)
    assert torch.equal(model.get_pos_embed((4, 4)), grid)  # no resize
    ref = F.interpolate(grid.permute(0, 3, 1, 2), size=(5, 7),
                        mode='bicubic',
                        align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(model.get_pos_embed((5, 7)), ref,
                               rtol=0, atol=0)
    # depth 0, no final norm: the output is patch_embed + resized pos_embed.
    img = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        (out, ) = model(img)
        patches = model.patch_embed.proj(img)
    torch.testing.assert_close(out, patches + ref.permute(0, 3, 1, 2))


def test_drop_path_train_vs_eval():
    model = ViTDet(img_size=64, patch_size=16, embed_dim=32, depth=4,
                   num_heads=2, window_size=2, global_attn_indexes=(3, ),
                   drop_path_rate=0.5)
    img = torch.randn(4, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    (a, ) = model(img)
    torch.manual_seed(1)
    (b, ) = model(img)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        (c, ), (d, ) = model(img), model(img)
    assert torch.equal(c, d)


def test_with_cp_same_gradients():
    torch.manual_seed(0)
    plain = ViTDet(img_size=64, patch_size=16, embed_dim=32, depth=2,
                   num_heads=2, window_size=2, global_attn_indexes=(1, ))
    ckpt = ViTDet(img_size=64, patch_size=16, embed_dim=32, depth=2,
                  num_heads=2, window_size=2, global_attn_indexes=(1, ),
                  with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    img = torch.randn(1, 3, 64, 64)
    for model in (plain, ckpt):
        model(img)[0].sum().backward()
    torch.testing.assert_close(ckpt.pos_embed.grad, plain.pos_embed.grad)


def test_bad_arguments():
    with pytest.raises(ValueError, match='out of range'):
        ViTDet(depth=2, global_attn_indexes=(2, ))
    with pytest.raises(ValueError, match='multiple of num_heads'):
        ViTDet(embed_dim=30, num_heads=4, depth=1, global_attn_indexes=())
    with pytest.raises(ValueError, match="'mlp' or 'swiglu'"):
        ViTDet(embed_dim=32, num_heads=4, depth=1, mlp='glu',
               global_attn_indexes=())


# ------------------------------------------------------------ SimpleFPN --


@pytest.mark.parametrize('patch, strides', [(16, [4, 8, 16, 32, 64]),
                                            (14, [3.5, 7, 14, 28, 56])])
def test_simple_fpn_shapes_and_strides(patch, strides):
    assert simple_fpn_strides(patch) == strides
    backbone = ViTDet(img_size=patch * 4, patch_size=patch, embed_dim=64,
                      depth=2, num_heads=4, window_size=2,
                      global_attn_indexes=(1, ))
    neck = SimpleFPN(backbone_channel=64, out_channels=32)
    assert neck.in_channels == [16, 32, 64, 64]
    size = patch * 16
    outs = neck(backbone(torch.randn(2, 3, size, size)))
    assert len(outs) == 5
    assert [o.shape[1] for o in outs] == [32] * 5
    assert [size / o.shape[-1] for o in outs] == strides
    assert [size / o.shape[-2] for o in outs] == strides


def test_simple_fpn_names_and_norm():
    from mmcv.cnn import build_norm_layer
    neck = SimpleFPN(backbone_channel=64, out_channels=32)
    names = set(neck.state_dict())
    assert {'fpn1.0.weight', 'fpn1.1.weight', 'fpn1.3.weight',
            'fpn2.0.weight', 'lateral_convs.0.conv.weight',
            'lateral_convs.0.ln.weight', 'fpn_convs.3.conv.weight',
            'fpn_convs.3.ln.bias'} <= names
    assert 'lateral_convs.0.conv.bias' not in names  # normalised: no bias
    # 'LN2d' resolves without a default scope; channels-only LayerNorm.
    norm = build_norm_layer(dict(type='LN2d', eps=1e-6), 8)[1]
    assert isinstance(norm, LayerNorm2d) and norm.eps == 1e-6
    x = torch.randn(2, 8, 3, 5)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (8, ),
                       eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), ref)
    with pytest.raises(ValueError, match='in_channels'):
        SimpleFPN(backbone_channel=64, in_channels=[16, 32, 64, 32])
    with pytest.raises(ValueError, match='decreasing'):
        SimpleFPN(backbone_channel=64, scale_factors=(1.0, 2.0))
    # A subset of the factors, no norm.
    neck = SimpleFPN(backbone_channel=64, out_channels=16,
                     scale_factors=(2.0, 1.0), num_outs=3, norm_cfg=None)
    outs = neck(torch.randn(1, 64, 4, 4))
    assert [o.shape[-1] for o in outs] == [8, 4, 2]


# ------------------------------------------------- Mask R-CNN end to end --


def _mask_rcnn_cfg(patch: int):
    from mmengine.hub import get_config
    cfg = get_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    strides = simple_fpn_strides(patch)
    model = cfg.model
    model.data_preprocessor.pad_size_divisor = 4 * patch
    model.backbone = dict(
        type='ViTDet', img_size=4 * patch, patch_size=patch, embed_dim=64,
        depth=2, num_heads=4, window_size=3, global_attn_indexes=(1, ),
        use_rel_pos=True, drop_path_rate=0.1)
    model.neck = dict(type='SimpleFPN', backbone_channel=64,
                      out_channels=32, num_outs=5)
    model.rpn_head.in_channels = model.rpn_head.feat_channels = 32
    model.rpn_head.anchor_generator.strides = strides
    roi = model.roi_head
    for extractor in (roi.bbox_roi_extractor, roi.mask_roi_extractor):
        extractor.out_channels = 32
        extractor.featmap_strides = strides[:4]
    roi.bbox_head.update(in_channels=32, fc_out_channels=64, num_classes=3)
    roi.mask_head.update(in_channels=32, conv_out_channels=32, num_convs=1,
                         num_classes=3)
    # Fewer proposals and detections than COCO's, to keep the test fast.
    model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
    model.test_cfg.rpn.update(nms_pre=200, max_per_img=100)
    model.test_cfg.rcnn.update(score_thr=0.0, max_per_img=20)
    return model


def _fake_batch(size: int) -> dict:
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(
            torch.randint(0, 256, (3, size, size), generator=gen,
                          dtype=torch.uint8))
        boxes = torch.tensor([[10., 12., 70., 80.], [40., 30., 120., 110.]])
        masks = np.zeros((2, size, size), dtype=np.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        sample = DetDataSample(
            metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                          scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(
            bboxes=boxes, labels=torch.tensor([0, 2]),
            masks=BitmapMasks(masks, size, size))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@pytest.fixture(scope='module')
def mmdet_models():
    """mmdet's MODELS with the default scope set (imports all of
    mmdet.models once, ~4 s); mmconv.models is imported above."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    return MODELS


@pytest.mark.parametrize('patch', [16, 14])
def test_mask_rcnn_loss_and_predict(patch, mmdet_models):
    torch.manual_seed(0)
    model = mmdet_models.build(_mask_rcnn_cfg(patch))
    model.init_weights()
    assert isinstance(model.backbone, ViTDet)
    assert isinstance(model.neck, SimpleFPN)
    size = 128
    # MMDetection takes the (fractional, for patch 14) strides as given.
    strides = simple_fpn_strides(patch)
    generator = model.rpn_head.prior_generator
    assert [s[0] for s in generator.strides] == strides
    priors = generator.grid_priors([(6, 6)] * 5, device='cpu')
    centers = (priors[0][:, :2] + priors[0][:, 2:]) / 2
    assert torch.allclose(centers[3] - centers[0],
                          torch.tensor([float(strides[0]), 0.]))
    layers = model.roi_head.bbox_roi_extractor.roi_layers
    assert [layer.spatial_scale for layer in layers] == [
        1 / s for s in strides[:4]]

    model.train()
    data = model.data_preprocessor(_fake_batch(size), training=True)
    losses = model(**data, mode='loss')
    for key in ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox',
                'loss_mask'):
        assert key in losses
    total = sum(
        sum(v) if isinstance(v, (list, tuple)) else v
        for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.pos_embed.grad.abs().sum() > 0
    assert model.neck.fpn1[0].weight.grad.abs().sum() > 0

    model.eval()
    data = model.data_preprocessor(_fake_batch(size), training=False)
    with torch.no_grad():
        results = model(**data, mode='predict')
    assert len(results) == 2
    for result in results:
        pred = result.pred_instances
        assert pred.bboxes.shape[1] == 4 and len(pred.bboxes) > 0
        assert pred.masks.shape[1:] == (size, size)
        assert len(pred.masks) == len(pred.bboxes)
