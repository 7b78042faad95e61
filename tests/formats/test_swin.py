# Copyright (c) mmconv contributors. All rights reserved.
"""Swin v1 / V2 / SimMIM / timm checkpoints -> MMDetection SwinTransformer
and mmpretrain SwinTransformerV2: every layout is auto-detected, converted
bit for bit (after the documented patch-merging reorder), loaded into the
backbone built from the shipped config, and computes timm's stage outputs;
relative position tables at another window are resized exactly as
MMDetection does; wrong files and sizes fail with one clear error."""
import os
from typing import Dict

import pytest
import torch

from mmconv import ConversionError, convert_checkpoint
from mmconv.detect import candidates
from tests.fixtures import swin_layouts as L
from tests.helpers.tiers import sweep

pytest.importorskip('timm')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, 'configs', 'swin')
SWIN_T = 'mask-rcnn_swin-t-p4-w7-official-raw-pre_fpn_1x_coco.py'
SIMMIM = 'mask-rcnn_swin-b-p4-w7-simmim-selfsup-raw-pre_fpn_1x_coco.py'
SWINV2 = 'mask-rcnn_swinv2-t-w8-official-raw-pre_fpn_1x_coco.py'
#: format -> shipped config whose backbone the layout is loaded into
CONFIG_OF = {'swin': SWIN_T, 'timm_swin': SWIN_T, 'simmim': SIMMIM,
             'swinv2': SWINV2, 'timm_swinv2': SWINV2,
             'simmim_swinv2': SWINV2, 'mmdet_swin': SWIN_T,
             'mmpretrain_swinv2': SWINV2}

#: largest relative error seen per layout and stage (printed with -s)
MAX_REL_ERR: Dict[str, float] = {}


def backbone_from_config(name: str, layout: L.SwinLayout, **extra):
    """The shipped config's backbone with the layout's sizes (no init)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    init_default_scope('mmdet')
    cfg = Config.fromfile(os.path.join(CONFIGS, name))
    backbone = cfg.model.backbone
    args = dict(layout.backbone_args)
    if layout.v2:
        assert backbone.type == 'mmpretrain.SwinTransformerV2'
        args.pop('out_indices')
    else:
        assert backbone.type == 'SwinTransformer'
        assert backbone.convert_weights is False
    assert backbone.out_indices == (0, 1, 2, 3)
    checkpoint = extra.pop('checkpoint', None)
    backbone.update(args, **extra)
    if checkpoint is None:
        backbone.init_cfg = None
    else:
        backbone.init_cfg.checkpoint = checkpoint
    return MODELS.build(backbone)


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def _stage_errors(model, reference, img):
    model.eval()
    with torch.no_grad():
        ours = model(img)
    refs = reference(img)
    assert [o.shape for o in ours] == [r.shape for r in refs]
    return [_rel_err(o, r) for o, r in zip(ours, refs)]


def _timm_at(layout: L.SwinLayout, size: int):
    """timm's model of the layout's weights built for another input size
    (same tables: the window is unchanged)."""
    model = L.build_timm(layout.v2, size, layout.window_size,
                         num_classes=0 if layout.name.startswith('simmim')
                         else 10)
    model.load_state_dict(layout.timm_model.state_dict())
    return model.eval()


@pytest.mark.parametrize('case', sweep(L.BUILDERS, (
    'swin-released', 'swinv2-released', 'simmim', 'timm-swinv2',
    'mmpretrain-swinv2')))
def test_layout_converts_and_matches_timm(case):
    layout = L.BUILDERS[case]()
    conv = convert_checkpoint(layout.checkpoint)
    # auto-detected, uniquely
    assert conv.format.name == layout.name, conv.report.detection
    found = candidates(list(conv.source))
    assert len(found) == 1 or found[1].rank < found[0].rank, found
    # every tensor: timm's, bit for bit, permuted only where documented
    expected = L.expected_target_tensors(layout)
    assert set(conv.state_dict) == set(expected)
    reordered = set()
    for key, (tensor, how) in expected.items():
        got = conv.state_dict[key]
        assert got.dtype == tensor.dtype, key
        assert torch.equal(got, L.with_expected_order(tensor, how)), key
        if how is not None:
            reordered.add(key)
    if layout.name in ('mmdet_swin', 'mmpretrain_swinv2'):
        reordered = set()  # already in the target's order
    assert {k for k, _, _, _ in conv.changed} == reordered
    assert all('reorder_patch_merging' in w for _, _, _, w in conv.changed)
    # the very source tensors (no copy) except the reordered ones
    for rec in conv.report.kept:
        if rec.new not in reordered:
            assert conv.state_dict[rec.new].data_ptr() == \
                conv.source[rec.old].data_ptr(), rec
    # every source tensor accounted for, drops with a reason
    report = conv.report
    assert sorted(r.old for r in report.kept + report.aliases +
                  report.dropped) == sorted(conv.source)
    assert all(r.reason for r in report.dropped)
    # the arguments the weights imply
    meta = conv.meta['swin']
    assert meta['embed_dims'] == L.EMBED
    assert meta['depths'] == list(L.DEPTHS)
    assert meta['num_heads'] == list(L.HEADS)
    # V2 records its window only in the relative_coords_table buffers
    assert meta['window_size'] == (None if layout.name == 'timm_swinv2'
                                   else layout.window_size)

    # loads into the shipped config's backbone: exactly the documented
    # never-pretrained keys stay at their initialisation
    model = backbone_from_config(CONFIG_OF[layout.name], layout)
    result = model.load_state_dict(conv.state_dict, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == set(L.never_pretrained_keys(model))
    # with those (the target's own) the load is strict; mmpretrain's V2
    # deletes its index/coordinate buffers from any state dict it loads
    # (_delete_reinit_params), so strict=True fails even on its own
    if not layout.v2:
        own = model.state_dict()
        model.load_state_dict(dict(conv.state_dict, **{
            k: own[k] for k in L.never_pretrained_keys(model)}), strict=True)

    # stage outputs of timm at the pre-training resolution: MMDetection's
    # SwinTransformer (and mmpretrain's with pad_small_map=True, as the
    # config sets for detection) shifts the last stage's single window
    # where the official model does not: mmpretrain's official behaviour
    # (pad_small_map=False) for all four stages, MMDetection's for 0-2
    size = layout.img_size
    img = torch.randn(2, 3, size, size,
                      generator=torch.Generator().manual_seed(1))
    if layout.v2:
        exact = backbone_from_config(CONFIG_OF[layout.name], layout,
                                     pad_small_map=False)
        exact.load_state_dict(conv.state_dict, strict=False)
        errs = _stage_errors(exact, layout.reference, img)
    else:
        errs = _stage_errors(model, layout.reference, img)[:3]
    print(f'\n{case}: relative error per stage vs timm {errs}')
    assert max(errs) < 1e-5, errs
    # the shipped backbone at twice the size: every stage
    img = torch.randn(1, 3, 2 * size, 2 * size,
                      generator=torch.Generator().manual_seed(2))
    big = _timm_at(layout, 2 * size)
    errs = _stage_errors(model, lambda x: L.timm_pyramid(big, x), img)
    MAX_REL_ERR[case] = max(errs)
    print(f'{case} at {2 * size}: {errs}')
    assert max(errs) < 1e-5, errs


def test_unfold_order_is_mmdetections_reorder():
    """The permutation equals the measured nn.Unfold order and MMDetection's
    own swin_converter on the same weights."""
    from mmdet.models.backbones.swin import swin_converter
    from mmconv.formats.swin import PATCH_MERGING
    for channels in (16, 128):
        assert torch.equal(PATCH_MERGING.order(channels),
                           L.unfold_permutation(channels))
    layout = L.build_official()
    ours = convert_checkpoint(layout.checkpoint).state_dict
    theirs = swin_converter(layout.checkpoint['model'])
    for key in ours:
        if 'downsample' in key:
            assert torch.equal(ours[key], theirs['backbone.' + key]), key


def test_report_says_what_was_done():
    conv = convert_checkpoint(L.build_official('training').checkpoint)
    reasons = conv.report.dropped_by_reason()
    assert any(r.startswith('relative_position_index buffer') for r in
               reasons)
    assert any(r.startswith('attn_mask buffer') for r in reasons)
    assert 'ImageNet classifier' in reasons
    assert conv.report.mapping['norm.weight'] == 'norm3.weight'
    assert conv.report.mapping['layers.1.blocks.0.attn.qkv.weight'] == \
        'stages.1.blocks.0.attn.w_msa.qkv.weight'
    assert conv.report.mapping['layers.0.blocks.1.mlp.fc1.bias'] == \
        'stages.0.blocks.1.ffn.layers.0.0.bias'
    assert {'optimizer', 'lr_scheduler', 'max_accuracy', 'epoch',
            'config'} <= set(conv.report.ignored_entries)
    text = conv.summary()
    assert 'swin:     embed_dims=32 depths=(2, 2, 2, 2) ' \
        'num_heads=(2, 4, 8, 16) patch_size=4 window_size=7' in text
    assert 'norm0, norm1, norm2 have no pre-trained counterpart' in text
    assert "type='SwinTransformer'" in conv.config_hints('x.pth')
    assert 'convert_weights=False' in conv.config_hints('x.pth')
    timm = convert_checkpoint(L.build_timm_layout().checkpoint)
    assert timm.report.mapping['layers.1.downsample.reduction.weight'] == \
        'stages.0.downsample.reduction.weight'
    v2 = convert_checkpoint(L.build_official(v2=True).checkpoint)
    assert v2.report.mapping['layers.0.downsample.reduction.weight'] == \
        'stages.1.downsample.reduction.weight'
    assert any(r.startswith('relative_coords_table buffer')
               for r in v2.report.dropped_by_reason())
    assert "type='mmpretrain.SwinTransformerV2'" in v2.config_hints('x.pth')
    simmim = convert_checkpoint(L.build_simmim().checkpoint)
    reasons = simmim.report.dropped_by_reason()
    assert any(r.startswith('SimMIM decoder') for r in reasons)
    assert any(r.startswith('SimMIM mask token') for r in reasons)


# --- through SelfSupPretrained, from the raw file ------------------------
def _save(layout: L.SwinLayout, tmp_path) -> str:
    path = str(tmp_path / layout.filename)
    L.save_with_yacs(layout.checkpoint, path)
    return path


@pytest.mark.parametrize('case', sweep(L.BUILDERS, (
    'swin-training', 'simmim-swinv2', 'mmdet-swin2mmdet')))
def test_selfsup_pretrained_loads_raw_file(case, tmp_path):
    """The shipped config's own init_weights (MMDetection's SwinTransformer
    reads init_cfg itself; mmconv hands SelfSupPretrained its turn) loads
    every pre-trained tensor; the rest is the documented fresh init."""
    layout = L.BUILDERS[case]()
    src = _save(layout, tmp_path)
    model = backbone_from_config(CONFIG_OF[layout.name], layout,
                                 checkpoint=src)
    assert model.init_cfg['type'] == 'SelfSupPretrained'
    model.init_weights()
    record = model._mmconv_pretrained
    assert record['format'] == layout.name
    state = model.state_dict()
    never = set(L.never_pretrained_keys(model))
    assert record['loaded'] == record['total'] == len(state) - len(never)
    for key, (tensor, how) in L.expected_target_tensors(layout).items():
        assert torch.equal(state[key], L.with_expected_order(tensor, how)), \
            key
    for key in never:
        if key.startswith('norm'):
            fill = 1.0 if key.endswith('weight') else 0.0
            assert torch.equal(state[key], torch.full_like(state[key],
                                                           fill)), key


def _mmdet_own_resize(table_src: Dict[str, torch.Tensor], window: int,
                      tmp_path) -> Dict[str, torch.Tensor]:
    """MMDetection's own init_weights (plain Pretrained, backbone.-prefixed
    file, convert_weights=False) loading window-7 tables into ``window``."""
    from mmdet.models.backbones import SwinTransformer
    from mmengine.config import ConfigDict
    path = str(tmp_path / 'prefixed.pth')
    torch.save({'state_dict': {'backbone.' + k: v
                               for k, v in table_src.items()}}, path)
    model = SwinTransformer(
        embed_dims=L.EMBED, depths=L.DEPTHS, num_heads=L.HEADS,
        window_size=window, drop_path_rate=0.0,
        init_cfg=ConfigDict(type='Pretrained', checkpoint=path))
    model.init_weights()
    return model.state_dict()


def test_window_resize_matches_mmdetection(tmp_path, capsys):
    """A window-7 file into a window-12 detector: SelfSupPretrained and
    `mmconv convert --window-size 12` give MMDetection's own bicubic
    tables, bit for bit, and say so."""
    from mmconv.cli import main
    layout = L.build_official()
    src = _save(layout, tmp_path)
    converted = convert_checkpoint(layout.checkpoint).state_dict
    theirs = _mmdet_own_resize(converted, 12, tmp_path)
    model = backbone_from_config(SWIN_T, layout, window_size=12,
                                 checkpoint=src)
    model.init_weights()
    ours = model.state_dict()
    tables = [k for k in ours if k.endswith('relative_position_bias_table')]
    assert len(tables) == sum(L.DEPTHS)
    for key in tables:
        assert ours[key].shape == (23 * 23, converted[key].shape[1])
        assert torch.equal(ours[key], theirs[key]), key
    dst = str(tmp_path / 'w12.pth')
    assert main(['convert', src, dst, '--window-size', '12']) == 0
    out = capsys.readouterr().out
    assert 'resize_relative_position_table: window 7 -> 12' in out
    assert f'{len(tables)} relative position bias tables resized' in out
    saved = torch.load(dst, weights_only=True)['state_dict']
    for key in tables:
        assert torch.equal(saved[key], theirs[key]), key
    assert main(['convert', src, str(tmp_path / 'bad.pth'),
                 '--window-size', '0']) == 2


def test_window_option_is_refused_for_a_resnet(tmp_path, tv_resnet50,
                                               capsys):
    from mmconv.cli import main
    src = str(tmp_path / 'r50.pth')
    torch.save(tv_resnet50.state_dict(), src)
    assert main(['convert', src, str(tmp_path / 'o.pth'),
                 '--window-size', '12']) == 2
    assert '--window-size does not apply' in capsys.readouterr().err


def test_swin_t_into_swin_b_config_fails_clearly(tmp_path):
    """A Swin-T-shaped file (here 32 wide, heads 2-16) into a wider config
    (48 wide, heads 3-24): one error naming counts and shapes."""
    from mmconv.init import SelfSupPretrainedInit
    layout = L.build_official()
    src = _save(layout, tmp_path)
    model = backbone_from_config(SWIN_T, layout, embed_dims=48,
                                 num_heads=(3, 6, 12, 24))
    with pytest.raises(ConversionError) as err:
        SelfSupPretrainedInit(checkpoint=src)(model)
    msg = str(err.value)
    assert 'tensors of SwinTransformer loaded' in msg
    assert 'shape mismatches' in msg
    assert 'patch_embed.projection.weight (32, 3, 4, 4) vs (48, 3, 4, 4)' \
        in msg
    # and deeper: the extra blocks are named as not loaded
    deep = backbone_from_config(SWIN_T, layout, depths=(2, 2, 6, 2))
    with pytest.raises(ConversionError, match=r'only \d+/\d+ tensors.*'
                       r'not loaded in the model: stages\.2\.blocks\.2\.'):
        SelfSupPretrainedInit(checkpoint=src)(deep)


def test_resnet_file_into_swin_config_fails_clearly(tmp_path, tv_resnet50):
    from mmconv.init import SelfSupPretrainedInit
    src = str(tmp_path / 'resnet50.pth')
    torch.save(tv_resnet50.state_dict(), src)
    model = backbone_from_config(SWIN_T, L.build_official())
    with pytest.raises(ConversionError,
                       match=r'only 0/\d+ tensors of SwinTransformer loaded'):
        SelfSupPretrainedInit(checkpoint=src)(model)


def test_plain_pretrained_keeps_mmdetection_behaviour(tmp_path):
    """Only SelfSupPretrained is handed over: MMDetection's own path still
    serves type='Pretrained' (here its backbone.-prefixed layout)."""
    layout = L.build_official()
    converted = convert_checkpoint(layout.checkpoint).state_dict
    state = _mmdet_own_resize(converted, 7, tmp_path)
    for key, value in converted.items():
        assert torch.equal(state[key], value), key


def test_incomplete_swin_is_refused():
    layout = L.build_official()
    sd = dict(layout.checkpoint['model'])
    del sd['layers.1.downsample.reduction.weight']
    with pytest.raises(ConversionError, match='not a complete Swin: missing '
                       r'stages\.1\.downsample'):
        convert_checkpoint({'model': sd})


def test_training_config_reads_with_both_safe_readers(tmp_path):
    """The yacs CfgNode of a training checkpoint reads as nested dicts,
    by torch's weights-only loader and by mmconv's own torch-zip reader."""
    from mmconv.allowlist import allowed_global
    from mmconv.fetching import load_source
    from mmconv.torchzip import load_torch_zip
    src = _save(L.build_official('training'), tmp_path)
    for loaded in (load_source(src), load_torch_zip(src, allowed_global)):
        config = loaded['config']
        assert isinstance(config, dict) and not type(config).__module__ \
            .startswith('yacs')
        assert config['MODEL']['TYPE'] == 'swin'
        assert config['DATA']['IMG_SIZE'] == 224


def test_converted_file_loads_again(tmp_path, capsys):
    """`mmconv convert` writes the SwinTransformer state dict;
    SelfSupPretrained reads it as the mmdet_swin layout (no change: the
    per-stage norms and buffers are still known as never pre-trained)."""
    from mmconv.cli import main
    from mmconv.init import SelfSupPretrainedInit
    layout = L.build_timm_layout()
    src = _save(layout, tmp_path)
    dst = str(tmp_path / 'swin.pth')
    assert main(['convert', src, dst]) == 0
    assert 'swin:     embed_dims=32' in capsys.readouterr().out
    model = backbone_from_config(SWIN_T, layout)
    init = SelfSupPretrainedInit(checkpoint=dst)
    init(model)
    assert init.format_name == 'mmdet_swin' and not init.result.changed
    state = model.state_dict()
    for key, (tensor, how) in L.expected_target_tensors(layout).items():
        assert torch.equal(state[key], L.with_expected_order(tensor, how)), \
            key
