# Copyright (c) mmconv contributors. All rights reserved.
"""Self-supervised ViT checkpoints -> ViTDet: every official layout is
auto-detected, converted bit for bit, loaded strictly into a ViTDet built
from the shipped config, and computes the same patch features as an
independent implementation (timm, or mmpretrain's own modules); wrong
files, methods and sizes fail with one clear error."""
import math
import os
from typing import Dict

import pytest
import torch

from mmconv import ConversionError, convert_checkpoint
from mmconv.detect import candidates
from tests.fixtures import vit_layouts as L
from tests.helpers.tiers import sweep

pytest.importorskip('timm')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, 'configs', 'vitdet')
MAE_CFG = 'mask-rcnn_vit-b-mae-selfsup-raw-pre_simple-fpn_lsj-100e_coco.py'
#: format -> shipped config whose backbone the layout is loaded into
CONFIG_OF = {
    'mae': MAE_CFG, 'timm_vit': MAE_CFG, 'mmpretrain_vit': MAE_CFG,
    'dino_vit': 'mask-rcnn_vit-b-dino-selfsup-raw-pre_simple-fpn_lsj-100e_'
    'coco.py',
    'ibot': 'mask-rcnn_vit-b-dino-selfsup-raw-pre_simple-fpn_lsj-100e_coco.py',
    'mocov3_vit': 'mask-rcnn_vit-b-mocov3-selfsup-raw-pre_simple-fpn_lsj-'
    '100e_coco.py',
    'dinov2': 'mask-rcnn_vit-b14-dinov2-selfsup-raw-pre_simple-fpn_lsj-100e_'
    'coco.py',
}

BUILDERS = {
    'mae-training': L.build_mae_training,
    'mae-released': L.build_mae_released,
    'timm-plain': lambda: L.build_timm_layout('plain'),
    'timm-dinov2-reg4': lambda: L.build_timm_layout('reg4'),
    'timm-reg4-embed-class': lambda: L.build_timm_layout('reg4-embed'),
    'timm-swiglu': lambda: L.build_timm_layout('swiglu'),
    'dino-teacher': L.build_dino_teacher,
    'dino-student': L.build_dino_student,
    'dino-released': L.build_dino_released,
    'ibot-teacher': L.build_ibot_teacher,
    'ibot-student': L.build_ibot_student,
    'mocov3': L.build_mocov3_vit,
    'dinov2-vits14': lambda: L.build_dinov2_hub('vits14'),
    'dinov2-vits14-reg4': lambda: L.build_dinov2_hub('vits14_reg4'),
    'dinov2-vitg14-reg4-swiglu': lambda: L.build_dinov2_hub('vitg14_reg4'),
    'dinov2-teacher-chunked': L.build_dinov2_teacher,
    'dinov2-teacher-chunked-reg4': lambda: L.build_dinov2_teacher(
        registers=4),
    'dinov2-training-teacher': L.build_dinov2_training,
    'dinov2-training-student': lambda: L.build_dinov2_training('student'),
    'mmpretrain-mae': lambda: L.build_mmpretrain_vit('MAE'),
    'mmpretrain-mocov3': lambda: L.build_mmpretrain_vit('MoCoV3'),
}

#: largest relative error seen per layout (printed with -s)
MAX_REL_ERR: Dict[str, float] = {}


def vitdet_from_config(name: str, **args):
    """The shipped config's backbone with the layout's sizes, every block
    global, no relative positions, final norm (pre-training model)."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    import mmconv.models  # noqa: F401 (registers ViTDet)
    cfg = Config.fromfile(os.path.join(CONFIGS, name)).model.backbone
    cfg.update(args, window_size=0, global_attn_indexes=(),
               use_rel_pos=False, final_norm=True, init_cfg=None)
    return MODELS.build(cfg)


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize('case', sweep(BUILDERS, (
    'mae-training', 'timm-dinov2-reg4', 'dino-teacher', 'ibot-student',
    'mocov3', 'dinov2-vitg14-reg4-swiglu', 'dinov2-teacher-chunked',
    'mmpretrain-mae')))
def test_layout_converts_and_matches_reference(case):
    layout = BUILDERS[case]()
    conv = convert_checkpoint(layout.checkpoint, select=layout.select)
    # auto-detected, uniquely
    assert conv.format.name == layout.name, conv.report.detection
    found = candidates(list(conv.source))
    assert len(found) == 1 or found[1].rank < found[0].rank, found
    # bit-identical tensors, the very source tensors except pos_embed
    assert set(conv.state_dict) == set(layout.expected)
    for key, tensor in layout.expected.items():
        assert torch.equal(conv.state_dict[key], tensor), key
        assert conv.state_dict[key].dtype == tensor.dtype
        if key != 'pos_embed':
            assert conv.state_dict[key].data_ptr() == tensor.data_ptr(), key
    changed = {k: (b, a, w) for k, b, a, w in conv.changed}
    assert set(changed) <= {'pos_embed'}
    if layout.pos_slots:
        before, after, what = changed['pos_embed']
        assert before[1] - after[1] == layout.pos_slots
        assert f'{layout.pos_slots} class' in what
    # every source tensor accounted for, drops with a reason
    report = conv.report
    assert sorted(r.old for r in report.kept + report.aliases +
                  report.dropped) == sorted(conv.source)
    assert all(r.reason for r in report.dropped)
    # the arguments the weights imply are the model's
    meta = conv.meta['vit']
    for key in ('img_size', 'patch_size', 'embed_dim', 'depth', 'num_heads',
                'qkv_bias', 'mlp', 'final_norm'):
        assert meta[key] == layout.vitdet[key], key
    assert meta['layer_scale'] == (layout.vitdet['layer_scale'] is not None)
    dim = meta['embed_dim']
    ratio = layout.vitdet['mlp_ratio']
    assert int(dim * meta['mlp_ratio']) == int(dim * ratio)
    line = next(x for x in conv.lines if x.startswith('vit:'))
    assert f'embed_dim={dim} depth={meta["depth"]}' in line
    assert f'patch_size={meta["patch_size"]}' in line
    assert f'layer_scale={"yes" if meta["layer_scale"] else "no"}' in line
    assert "type='ViTDet'" in conv.config_hints('out.pth')

    # strict load into the shipped config's ViTDet
    args = {k: layout.vitdet[k] for k in (
        'img_size', 'patch_size', 'embed_dim', 'depth', 'num_heads',
        'mlp_ratio', 'qkv_bias', 'layer_scale', 'mlp')}
    model = vitdet_from_config(CONFIG_OF[layout.name], **args).eval()
    result = model.load_state_dict(conv.state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    # same patch features as the independent implementation
    size = layout.img_size
    img = torch.randn(2, 3, size, size,
                      generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (ours, ) = model(img)
    ref = layout.reference(img)
    grid = size // meta['patch_size']
    assert ours.shape == ref.shape == (2, dim, grid, grid)
    err = _rel_err(ours, ref)
    MAX_REL_ERR[case] = err
    print(f'\n{case}: max relative error vs reference {err:.2e}')
    assert err < 1e-5


def test_timm_explicit_attention_path():
    """timm's explicit softmax(q k^T) path too (not only SDPA)."""
    layout = L.build_timm_layout('reg4')
    conv = convert_checkpoint(layout.checkpoint)
    model = vitdet_from_config(MAE_CFG, **{k: layout.vitdet[k] for k in (
        'img_size', 'patch_size', 'embed_dim', 'depth', 'num_heads',
        'layer_scale')}).eval()
    model.load_state_dict(conv.state_dict, strict=True)
    timm_model = L.build_timm(12, img_size=56, patch_size=14,
                              init_values=1e-5, reg_tokens=4,
                              no_embed_class=True)
    for block in timm_model.blocks:
        block.attn.fused_attn = False
    img = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        err = _rel_err(model(img)[0],
                       L.timm_patch_features(timm_model, img))
    print(f'\ntimm explicit attention: max relative error {err:.2e}')
    assert err < 1e-5


def test_reports_say_what_was_done():
    layout = L.build_dinov2_teacher(registers=4)
    conv = convert_checkpoint(layout.checkpoint)
    text = conv.summary()
    assert 'changed:  pos_embed [1, 17, 192] -> [1, 16, 192]: ' \
        'strip_class_slot: 1 class-token slot(s) removed' in text
    assert 'DINOv2 BlockChunk layout: 4 blocks in 2 chunks' in text
    assert 'LayerScale is carried' in text
    reasons = conv.report.dropped_by_reason()
    assert any('register tokens' in r for r in reasons)
    assert any('DINOv2 DINO head' in r for r in reasons)
    assert any('DINOv2 iBOT head' in r for r in reasons)
    assert any(r.startswith('mask token') for r in reasons)
    # the chunk index is dropped, the flat index kept
    mapping = conv.report.mapping
    assert mapping['backbone.blocks.1.2.norm1.weight'] == \
        'blocks.2.norm1.weight'
    assert 'layer_scale=1e-05' in conv.config_hints('x.pth')
    giant = convert_checkpoint(L.build_dinov2_hub('vitg14_reg4').checkpoint)
    assert giant.report.mapping['blocks.0.mlp.w12.weight'] == \
        'blocks.0.mlp.fc1.weight'
    assert giant.report.mapping['blocks.0.mlp.w3.bias'] == \
        'blocks.0.mlp.fc2.bias'
    mae = convert_checkpoint(L.build_mae_training().checkpoint)
    assert 'MAE decoder (pixel reconstruction)' in \
        mae.report.dropped_by_reason()
    assert mae.report.where == "checkpoint['model']"
    assert {'optimizer', 'epoch', 'scaler', 'args'} <= set(
        mae.report.ignored_entries)


def test_pos_embed_slots_are_declared_ops():
    """The class/register slots are cut by the pos_embed rule's op: timm
    with registers in pos_embed loses 1 + 4 slots, timm no_embed_class none
    (a note says so); a pos_embed that fits neither, or none, is refused
    with what is wrong."""
    embed = convert_checkpoint(L.build_timm_layout('reg4-embed').checkpoint)
    pos = embed.source['pos_embed']
    assert torch.equal(embed.state_dict['pos_embed'], pos[:, 5:])
    change, = [c for c in embed.changed if c.key == 'pos_embed']
    grid = math.isqrt(pos.shape[1] - 5)
    assert change.what == ('strip_prefix_slots: 5 class/register-token '
                           f'slot(s) removed, the {grid}x{grid} patch grid '
                           'kept')
    reg4 = convert_checkpoint(L.build_timm_layout('reg4').checkpoint)
    assert reg4.state_dict['pos_embed'] is reg4.source['pos_embed']
    assert not reg4.changed
    assert any('has no slot for the 5 class/register token(s) (timm '
               'no_embed_class)' in n for n in reg4.notes)
    sd = dict(L.build_timm_layout('reg4').checkpoint)
    sd['pos_embed'] = sd['pos_embed'][:, 1:]
    with pytest.raises(ConversionError, match='neither .* class/register '
                       'slots is a square patch grid'):
        convert_checkpoint(sd)
    mae = dict(L.build_mae_training().checkpoint['model'])
    mae['pos_embed'] = mae['pos_embed'][:, 1:]
    with pytest.raises(ConversionError, match='minus 1 class-token slot'):
        convert_checkpoint(mae, 'mae')
    del mae['pos_embed']
    with pytest.raises(ConversionError, match='no pos_embed in the MAE'):
        convert_checkpoint(mae, 'mae')


def test_num_heads_come_from_the_official_definitions():
    from mmconv.formats.vit import NUM_HEADS
    assert NUM_HEADS[384] == 6 and NUM_HEADS[768] == 12
    layout = L.build_mocov3_vit()
    conv = convert_checkpoint(layout.checkpoint)
    assert any('not recorded in the weights' in n for n in conv.notes)


# --- through SelfSupPretrained, from the raw file ------------------------
def _save(layout, tmp_path):
    path = str(tmp_path / layout.filename)
    torch.save(layout.checkpoint, path)
    return path


@pytest.mark.parametrize('case', ['mae-training', 'dino-student',
                                  'dinov2-teacher-chunked', 'mocov3',
                                  'mmpretrain-mae'])
def test_selfsup_pretrained_loads_raw_file(case, tmp_path):
    from mmconv.init import SelfSupPretrainedInit
    layout = BUILDERS[case]()
    src = _save(layout, tmp_path)
    args = {k: layout.vitdet[k] for k in (
        'img_size', 'patch_size', 'embed_dim', 'depth', 'num_heads',
        'mlp_ratio', 'qkv_bias', 'layer_scale', 'mlp')}
    model = vitdet_from_config(CONFIG_OF[layout.name], **args)
    init = SelfSupPretrainedInit(checkpoint=src, select=layout.select)
    init(model)
    assert init.format_name == layout.name
    for key, value in model.state_dict().items():
        assert torch.equal(value, layout.expected[key]), key


def test_vit_s_into_vit_b_config_fails_clearly(tmp_path):
    """A ViT-S-sized file (here 192 wide) into a wider config: one error
    naming the shapes."""
    from mmconv.init import SelfSupPretrainedInit
    src = _save(L.build_dino_teacher(), tmp_path)
    model = vitdet_from_config(CONFIG_OF['dino_vit'], img_size=64,
                               embed_dim=384, depth=3, num_heads=6)
    with pytest.raises(ConversionError) as err:
        SelfSupPretrainedInit(checkpoint=src)(model)
    msg = str(err.value)
    assert 'shape mismatches' in msg
    assert 'patch_embed.proj.weight (192, 3, 16, 16) vs (384, 3, 16, 16)' \
        in msg


def test_wrong_method_names_the_detected_format(tmp_path):
    from mmconv.init import SelfSupPretrainedInit
    src = _save(L.build_dino_teacher(), tmp_path)
    model = vitdet_from_config(CONFIG_OF['dino_vit'], img_size=64,
                               embed_dim=192, depth=3, num_heads=3)
    with pytest.raises(ConversionError, match="looks like 'dino_vit'"):
        SelfSupPretrainedInit(checkpoint=src, method='mocov3_vit')(model)


def test_resnet_file_into_vitdet_fails_clearly(tmp_path, tv_resnet50):
    from mmconv.init import SelfSupPretrainedInit
    src = str(tmp_path / 'resnet50.pth')
    torch.save(tv_resnet50.state_dict(), src)
    model = vitdet_from_config(MAE_CFG, img_size=64, embed_dim=64, depth=1,
                               num_heads=2)
    with pytest.raises(ConversionError,
                       match=r'only 0/\d+ tensors of ViTDet loaded'):
        SelfSupPretrainedInit(checkpoint=src)(model)


def test_select_student_on_a_teacher_only_file():
    layout = L.build_dinov2_teacher()
    with pytest.raises(ConversionError, match="no 'student' entry"):
        convert_checkpoint(layout.checkpoint, select='student')


def test_inconsistent_vit_is_refused():
    layout = L.build_dino_released()
    sd = dict(layout.checkpoint)
    del sd['blocks.1.attn.proj.weight']
    with pytest.raises(ConversionError,
                       match='not a consistent ViT.*missing: '
                       r'blocks\.1\.attn\.proj\.weight'):
        convert_checkpoint(sd)
    sd = dict(layout.checkpoint)
    sd['pos_embed'] = sd['pos_embed'][:, :-2]
    with pytest.raises(ConversionError, match='square patch grid'):
        convert_checkpoint(sd)


def test_converted_file_round_trips(tmp_path, capsys):
    """`mmconv convert` writes the ViTDet state dict; MMEngine's
    Pretrained loads it, and converting it again changes nothing."""
    from mmconv.cli import main
    layout = L.build_dinov2_hub('vits14_reg4')
    src = _save(layout, tmp_path)
    dst = str(tmp_path / 'vitdet.pth')
    assert main(['convert', src, dst]) == 0
    out = capsys.readouterr().out
    assert 'vit:      embed_dim=192 depth=4 num_heads=3 patch_size=14' in out
    saved = torch.load(dst, weights_only=True)
    assert saved['meta']['vit']['patch_size'] == 14
    for key, value in layout.expected.items():
        assert torch.equal(saved['state_dict'][key], value), key
    again = convert_checkpoint(saved)
    assert again.format.name == 'timm_vit' and not again.changed
