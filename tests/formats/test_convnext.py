# Copyright (c) mmconv contributors. All rights reserved.
"""ConvNeXt v1 / v2 checkpoints -> mmpretrain.ConvNeXt: every official
layout is auto-detected, converted bit for bit (after the documented
reshapes), loaded into the ConvNeXt built from the shipped config, and
computes timm's stage outputs; wrong sizes and families fail with one
clear error."""
import os
import re
from typing import List

import pytest
import torch

from mmconv import ConversionError, convert_checkpoint
from mmconv.detect import candidates
from tests.fixtures import convnext_layouts as L
from tests.helpers.tiers import sweep

pytest.importorskip('timm')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, 'configs', 'convnext')
V1_CFG = ('mask-rcnn_convnext-t-p4-w7-official-raw-pre_fpn_amp-ms-crop-3x_'
          'coco.py')
V2_CFG = ('mask-rcnn_convnextv2-t-p4-w7-fcmae-selfsup-raw-pre_fpn_amp-ms-'
          'crop-3x_coco.py')

BUILDERS = {
    'official-v1-training': lambda: L.build_official_v1('training'),
    'official-v1-training-ema': lambda: L.build_official_v1('ema'),
    'official-v1-released': lambda: L.build_official_v1('released'),
    'official-v2-released': L.build_official_v2,
    'fcmae-training': lambda: L.build_fcmae('training'),
    'fcmae-released': lambda: L.build_fcmae('released'),
    'timm-v1': lambda: L.build_timm_layout('v1'),
    'timm-v2': lambda: L.build_timm_layout('v2'),
    'timm-conv-mlp': lambda: L.build_timm_layout('conv_mlp'),
    'timm-v2-fcmae': lambda: L.build_timm_layout('v2-fcmae'),
    'mmpretrain-v1': L.build_mmpretrain,
    'mmpretrain-v2': lambda: L.build_mmpretrain(v2=True),
}


def convnext_from_config(layout: L.ConvNeXtLayout, **overrides):
    """The shipped config's backbone (v2 config for GRN layouts) with the
    layout's depths and channels, drop path 0, no init_cfg."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    name = V2_CFG if layout.backbone['use_grn'] else V1_CFG
    cfg = Config.fromfile(os.path.join(CONFIGS, name)).model.backbone
    cfg.update(arch=layout.backbone['arch'], drop_path_rate=0.,
               init_cfg=None)
    cfg.update(overrides)
    init_default_scope('mmdet')
    return MODELS.build(cfg)


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def _stage_outputs(model, img: torch.Tensor) -> List[torch.Tensor]:
    """mmpretrain ConvNeXt's raw stage outputs (before norm0-3) and its
    normed outputs."""
    raw: List[torch.Tensor] = []
    hooks = [stage.register_forward_hook(lambda m, i, o: raw.append(o))
             for stage in model.stages]
    try:
        with torch.no_grad():
            normed = model(img)
    finally:
        for h in hooks:
            h.remove()
    return raw, list(normed)


@pytest.mark.parametrize('case', sweep(BUILDERS, (
    'official-v1-training', 'official-v2-released', 'fcmae-training',
    'timm-v2', 'mmpretrain-v1')))
def test_layout_converts_and_loads(case):
    layout = BUILDERS[case]()
    conv = convert_checkpoint(layout.checkpoint, select=layout.select)
    # auto-detected, uniquely
    assert conv.format.name == layout.name, conv.report.detection
    found = candidates(list(conv.source))
    assert len(found) == 1 or found[1].rank < found[0].rank, found
    # bit-identical: the very source tensors unless reshaped (then listed)
    assert set(conv.state_dict) == set(layout.expected)
    changed = {k: (b, a) for k, b, a, _ in conv.changed}
    assert set(changed) == set(layout.reshaped)
    for key, tensor in layout.expected.items():
        ours = conv.state_dict[key]
        assert ours.dtype == tensor.dtype and torch.equal(ours, tensor), key
        if key in changed:
            assert changed[key] == (layout.reshaped[key], tuple(tensor.shape))
        else:
            src = conv.source[next(o for o, n in conv.report.mapping.items()
                                   if n == key)]
            assert ours.data_ptr() == src.data_ptr(), key
    # every source tensor accounted for, drops with a reason
    report = conv.report
    assert sorted(r.old for r in report.kept + report.aliases +
                  report.dropped) == sorted(conv.source)
    assert all(r.reason for r in report.dropped)
    # what the weights imply
    meta = conv.meta['convnext']
    assert meta['depths'] == list(L.DEPTHS)
    assert meta['channels'] == list(L.DIMS)
    assert meta['use_grn'] == layout.backbone['use_grn']
    assert meta['layer_scale'] == (layout.backbone[
        'layer_scale_init_value'] > 0)
    assert meta['final_norm'] == ('norm3' not in layout.fresh)
    hints = conv.config_hints('out.pth')
    assert "type='mmpretrain.ConvNeXt'" in hints
    assert ('use_grn=True' in hints) == layout.backbone['use_grn']
    # into the shipped config's ConvNeXt: only the declared fresh norms
    # stay at their initialisation
    model = convnext_from_config(layout)
    result = model.load_state_dict(conv.state_dict, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == layout.left_at_init


REFERENCE_CASES = [c for c in BUILDERS if not c.startswith('mmpretrain')]


@pytest.mark.parametrize('case', sweep(REFERENCE_CASES, (
    'official-v1-training-ema', 'official-v2-released', 'fcmae-released',
    'timm-conv-mlp')))
def test_stage_outputs_equal_timm(case):
    """Stage outputs of the converted mmpretrain ConvNeXt equal timm's at
    224 px (fp32, eval, drop path 0) within 1e-5 relative; norm3 equals
    timm's head.norm on the last stage when the file has a final norm."""
    layout = BUILDERS[case]()
    conv = convert_checkpoint(layout.checkpoint, select=layout.select)
    model = convnext_from_config(layout)
    model.eval()  # mmpretrain's ConvNeXt.train() returns None
    model.load_state_dict(conv.state_dict, strict=False)
    img = torch.randn(2, 3, 224, 224,
                      generator=torch.Generator().manual_seed(3))
    ours, normed = _stage_outputs(model, img)
    with torch.no_grad():
        ref = L.timm_stage_outputs(layout.reference, img)
        errs = [_rel_err(o, r) for o, r in zip(ours, ref)]
        assert [o.shape for o in ours] == [r.shape for r in ref]
        assert ref[-1].shape == (2, L.DIMS[-1], 7, 7)
        if 'norm3' not in layout.fresh:
            errs.append(_rel_err(normed[3],
                                 layout.reference.head.norm(ref[-1])))
    print(f'\n{case}: max relative error vs timm {max(errs):.2e}')
    assert max(errs) < 1e-5, errs


# --- the fixtures are the official layouts -------------------------------
@pytest.mark.parametrize('v2', [False, True], ids=['v1', 'v2'])
def test_official_layout_matches_manifest_and_timm_filter(v2):
    """The built official file has exactly the keys and shapes of the
    official model (recorded manifest), and timm's checkpoint_filter_fn,
    which loads the official files, turns it back into the timm model."""
    from timm.models.convnext import checkpoint_filter_fn
    layout = L.build_official_v2() if v2 else L.build_official_v1('released')
    sd = layout.checkpoint['model']
    manifest = L.official_manifest(v2)
    assert {k: tuple(v.shape) for k, v in sd.items()} == dict(manifest)
    assert all(v.dtype == torch.float32 for v in sd.values())
    timm_sd = layout.reference.state_dict()
    back = checkpoint_filter_fn(layout.checkpoint, layout.reference)
    assert set(back) == set(timm_sd)
    for key, value in timm_sd.items():
        assert torch.equal(back[key], value), key


def test_fcmae_layout_matches_manifest():
    layout = L.build_fcmae('training')
    sd = layout.checkpoint['model']
    assert {k: tuple(v.shape) for k, v in sd.items()} == \
        dict(L.fcmae_manifest())
    assert {'optimizer', 'epoch', 'scaler', 'args'} <= set(layout.checkpoint)


def test_sparse_kernels_follow_remap_checkpoint_keys():
    """ConvNeXt-V2 utils.remap_checkpoint_keys: dense[o, i, y, x] =
    kernel[x*k + y, i, o] (conv), dense[c, 0, y, x] = kernel[x*k + y, c]
    (depthwise); checked element by element on numbered kernels."""
    layout = L.build_fcmae('released')
    sd = dict(layout.checkpoint['model'])
    conv_key = 'encoder.downsample_layers.1.1.kernel'
    dw_key = 'encoder.stages.0.0.dwconv.kernel'
    sd[conv_key] = torch.arange(sd[conv_key].numel(),
                                dtype=torch.float32).view(sd[conv_key].shape)
    sd[dw_key] = torch.arange(sd[dw_key].numel(),
                              dtype=torch.float32).view(sd[dw_key].shape)
    conv = convert_checkpoint({'model': sd})
    dense = conv.state_dict['downsample_layers.1.1.weight']
    kernel = sd[conv_key]
    k = 2
    assert dense.shape == (L.DIMS[1], L.DIMS[0], k, k)
    for o, i, y, x in [(0, 0, 0, 1), (5, 3, 1, 0), (L.DIMS[1] - 1, 7, 1, 1)]:
        assert dense[o, i, y, x] == kernel[x * k + y, i, o]
    dense = conv.state_dict['stages.0.0.depthwise_conv.weight']
    kernel, k = sd[dw_key], L.KERNEL
    assert dense.shape == (L.DIMS[0], 1, k, k)
    for c, y, x in [(0, 0, 1), (3, 6, 2), (L.DIMS[0] - 1, 4, 5)]:
        assert dense[c, 0, y, x] == kernel[x * k + y, c]
    bias = conv.state_dict['downsample_layers.1.1.bias']
    assert bias.shape == (L.DIMS[1], )
    assert torch.equal(bias, sd['encoder.downsample_layers.1.1.bias'][0])


def test_reports_say_what_was_done():
    conv = convert_checkpoint(L.build_fcmae('training').checkpoint)
    text = conv.summary()
    assert 'convnext: arch=custom depths=[2, 1, 3, 1] channels=[32, 48, ' \
        '64, 80] grn=yes layer_scale=no final_norm=none' in text
    assert 'changed:  stages.0.0.grn.gamma [1, 128] -> [128]: ' \
        'grn_to_vector' in text
    assert 'changed:  stages.0.0.depthwise_conv.weight [49, 32] -> ' \
        '[32, 1, 7, 7]: densify_sparse_kernels' in text
    assert 'norm0, norm1, norm2, norm3 (per-output norms' in text
    reasons = conv.report.dropped_by_reason()
    for what in ('FCMAE mask token (decoder input)',
                 'FCMAE decoder projection (proj)', 'FCMAE decoder blocks',
                 'FCMAE pixel prediction (pred)'):
        assert what in reasons
    assert conv.report.where == "checkpoint['model']"
    v2 = convert_checkpoint(L.build_official_v2().checkpoint)
    assert 'changed:  stages.0.0.grn.beta [1, 1, 1, 128] -> [128]' in \
        v2.summary()
    assert v2.report.mapping['norm.weight'] == 'norm3.weight'
    assert 'ImageNet classifier (head)' in v2.report.dropped_by_reason()
    assert 'layer_scale_init_value=0.' in v2.config_hints('x.pth')
    v1 = convert_checkpoint(L.build_official_v1('training').checkpoint)
    assert v1.report.where == "checkpoint['model']"
    assert 'model_ema' in v1.report.ignored_entries


# --- model / model_ema --------------------------------------------------
def test_select_ema_takes_model_ema(tmp_path, capsys):
    from mmconv.cli import main
    layout = L.build_official_v1('ema')
    conv = convert_checkpoint(layout.checkpoint, select='ema')
    assert conv.report.where == "checkpoint['model_ema']"
    assert 'model' in conv.report.ignored_entries
    for key, value in layout.expected.items():
        assert torch.equal(conv.state_dict[key], value), key
    plain = convert_checkpoint(layout.checkpoint)
    assert not torch.equal(plain.state_dict['stages.0.0.gamma'],
                           conv.state_dict['stages.0.0.gamma'])
    src = str(tmp_path / layout.filename)
    torch.save(layout.checkpoint, src)
    dst = str(tmp_path / 'ema.pth')
    assert main(['convert', src, dst, '--select', 'ema']) == 0
    saved = torch.load(dst, weights_only=True)['state_dict']
    assert torch.equal(saved['norm3.weight'], layout.expected['norm3.weight'])
    released = L.build_official_v1('released').checkpoint
    with pytest.raises(ConversionError,
                       match="select='ema': the checkpoint has no "
                       "'model_ema' entry"):
        convert_checkpoint(released, select='ema')
    with pytest.raises(ConversionError, match='no teacher/student'):
        convert_checkpoint(released, select='teacher')


# --- through SelfSupPretrained, from the raw file ------------------------
def _save(layout: L.ConvNeXtLayout, tmp_path) -> str:
    path = str(tmp_path / layout.filename)
    torch.save(layout.checkpoint, path)
    return path


@pytest.mark.parametrize('case', ['official-v1-training',
                                  'official-v1-training-ema',
                                  'official-v2-released', 'fcmae-training',
                                  'timm-v2-fcmae', 'mmpretrain-v1'])
def test_selfsup_pretrained_loads_raw_file(case, tmp_path):
    from mmconv.init import SelfSupPretrainedInit
    layout = BUILDERS[case]()
    src = _save(layout, tmp_path)
    model = convnext_from_config(layout)
    fresh = {k: v.clone() for k, v in model.state_dict().items()
             if k in layout.left_at_init}
    init = SelfSupPretrainedInit(checkpoint=src, select=layout.select)
    init(model)
    assert init.format_name == layout.name
    assert set(init.never_pretrained) == layout.left_at_init
    assert init.total == len(layout.expected) == len(init.loaded)
    state = model.state_dict()
    for key, value in layout.expected.items():
        assert torch.equal(state[key], value), key
    for key, value in fresh.items():  # left at their initialisation
        assert torch.equal(state[key], value), key


def test_convnext_t_file_into_convnext_s_config_fails_clearly(tmp_path):
    """A full-size official ConvNeXt-T file into the shipped config set to
    ConvNeXt-S (same widths, 27 blocks in stage 3 instead of 9): one error
    with the counts, the first blocks the file lacks and its architecture."""
    import timm
    from mmconv.init import SelfSupPretrainedInit
    torch.manual_seed(0)
    tiny = timm.create_model('convnext_tiny', pretrained=False)
    src = str(tmp_path / 'convnext_tiny_1k_224_ema.pth')
    torch.save({'model': L.official_state_dict(tiny)}, src)
    del tiny
    layout = L.build_official_v1('released')
    model = convnext_from_config(layout, arch='small')
    with pytest.raises(ConversionError) as err:
        SelfSupPretrainedInit(checkpoint=src)(model)
    msg = str(err.value)
    total = len([k for k in model.state_dict()
                 if not re.match(r'norm[0-2]\.', k)])
    in_file = total - 18 * 9  # stages.2.9 ... 26: 9 tensors each
    assert f'only {in_file}/{total} tensors of ConvNeXt loaded' in msg
    assert 'not loaded in the model: stages.2.9.' in msg
    assert 'the file holds: convnext: arch=tiny depths=[3, 3, 9, 3] ' \
        'channels=[96, 192, 384, 768]' in msg
    assert '\n' not in msg


def test_convnext_s_sized_widths_mismatch_names_the_shapes(tmp_path):
    """Wider stages than the file: the shape mismatches are named."""
    from mmconv.init import SelfSupPretrainedInit
    layout = L.build_official_v1('released')
    src = _save(layout, tmp_path)
    wider = dict(depths=list(L.DEPTHS), channels=[48, 48, 64, 80])
    model = convnext_from_config(layout, arch=wider)
    with pytest.raises(ConversionError, match=r'shape mismatches: '
                       r'downsample_layers\.0\.0\.weight \(32, 3, 4, 4\) vs '
                       r'\(48, 3, 4, 4\)'):
        SelfSupPretrainedInit(checkpoint=src)(model)


def test_convnext_file_into_swin_config_fails_clearly(tmp_path):
    """A ConvNeXt file into MMDetection's SwinTransformer (Swin config):
    nothing fits, one error naming the counts."""
    from mmengine.hub import get_config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmconv.init import SelfSupPretrainedInit
    register_all_modules()
    src = _save(L.build_official_v1('released'), tmp_path)
    cfg = get_config(
        'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py').model.backbone
    cfg.update(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
               init_cfg=None)
    init_default_scope('mmdet')
    swin = MODELS.build(cfg)
    with pytest.raises(ConversionError,
                       match=r'only 0/\d+ tensors of SwinTransformer loaded '
                       r'from .*convnext_tiny_1k_224_ema\.pth'):
        SelfSupPretrainedInit(checkpoint=src)(swin)


def test_wrong_method_names_the_detected_format(tmp_path):
    from mmconv.init import SelfSupPretrainedInit
    layout = L.build_fcmae('released')
    src = _save(layout, tmp_path)
    model = convnext_from_config(layout)
    with pytest.raises(ConversionError,
                       match="looks like 'convnextv2_fcmae'"):
        SelfSupPretrainedInit(checkpoint=src, method='convnext')(model)


def test_inconsistent_convnext_is_refused():
    sd = dict(L.build_official_v1('released').checkpoint['model'])
    del sd['stages.2.1.pwconv2.weight']
    with pytest.raises(ConversionError,
                       match=r'not a consistent ConvNeXt .*missing: '
                       r'stages\.2\.1\.pointwise_conv2\.weight'):
        convert_checkpoint({'model': sd})
    sd = dict(L.build_official_v2().checkpoint['model'])
    sd['stages.0.0.grn.gamma'] = torch.zeros(2, 1, 1, 128)
    with pytest.raises(ConversionError, match='a GRN parameter is'):
        convert_checkpoint({'model': sd})


def test_converted_file_round_trips(tmp_path, capsys):
    """`mmconv convert` writes the mmpretrain backbone; MMEngine's
    Pretrained loads it; converting it again changes nothing."""
    from mmengine.runner import load_checkpoint
    from mmconv.cli import main
    layout = L.build_fcmae('released')
    src = _save(layout, tmp_path)
    dst = str(tmp_path / 'convnextv2.pth')
    assert main(['convert', src, dst]) == 0
    out = capsys.readouterr().out
    assert 'convnext: arch=custom depths=[2, 1, 3, 1]' in out
    assert "use_grn=True, layer_scale_init_value=0." in out
    saved = torch.load(dst, weights_only=True)
    assert saved['meta']['convnext']['use_grn'] is True
    model = convnext_from_config(layout)
    load_checkpoint(model, dst, strict=False)
    state = model.state_dict()
    for key, value in layout.expected.items():
        assert torch.equal(state[key], value), key
    again = convert_checkpoint(saved)
    assert again.format.name == 'mmpretrain_convnext' and not again.changed
    assert main(['formats']) == 0
    listed = capsys.readouterr().out
    for name in ('convnext', 'convnextv2', 'convnextv2_fcmae',
                 'timm_convnext', 'mmpretrain_convnext'):
        assert re.search(rf'^\s+{name}\s', listed, re.M), name
