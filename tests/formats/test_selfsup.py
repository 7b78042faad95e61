# Copyright (c) mmconv contributors. All rights reserved.
"""Every self-supervised format, end to end into MMDetection's Mask R-CNN
R50-FPN: real source layouts (official repos' module structure, mmpretrain's
own models, torchvision) with random weights -> command line / initializer
-> MMDetection ResNet-50 with every tensor equal to the source."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from mmconv import ConversionError, load_file
from mmconv.cli import preset_main
from tests.fixtures.mmpretrain_layouts import MMPRETRAIN_BUILDERS
from tests.fixtures.official_layouts import (ALL_BUILDERS, Layout,
                                             build_dino_student, save_layout)
from tests.helpers.tiers import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MASK_RCNN = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
BARE = ('mmdet', 'torchvision')


def _torchvision_layout() -> Layout:
    import torchvision
    torch.manual_seed(5)
    sd = torchvision.models.resnet50().state_dict()
    return Layout(name='torchvision', variant='imagenet', checkpoint=sd,
                  filename='resnet50-0676ba61.pth',
                  backbone={k: v for k, v in sd.items()
                            if not k.startswith('fc.')})


def _mmdet_layout() -> Layout:
    backbone = _build_backbone()
    torch.manual_seed(6)
    with torch.no_grad():
        for p in backbone.parameters():
            p.normal_()
    sd = backbone.state_dict()
    return Layout(name='mmdet', variant='converted',
                  checkpoint={'state_dict': sd, 'meta': {'converter': 'x'}},
                  filename='mocov2_r50_800ep_pretrain.pth', backbone=sd)


BUILDERS = list(ALL_BUILDERS) + list(MMPRETRAIN_BUILDERS) + [
    _torchvision_layout, _mmdet_layout]
_CACHE = {}


def _layout(i: int) -> Layout:
    if i not in _CACHE:
        _CACHE[i] = BUILDERS[i]()
    return _CACHE[i]


def _layout_id(i: int) -> str:
    """The builder's name (collection builds nothing)."""
    return BUILDERS[i].__name__.replace('build_', '').lstrip('_')


def _mask_rcnn_cfg():
    from mmengine.hub import get_config
    return get_config(MASK_RCNN)


def _build_backbone(init_cfg=None):
    """Mask R-CNN R50-FPN's backbone as its config builds it."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = _mask_rcnn_cfg()
    cfg.model.backbone.init_cfg = init_cfg
    return MODELS.build(cfg.model.backbone)


def _assert_backbone_equals(state_dict, layout: Layout):
    """Every tensor of the MMDetection backbone equals the source's."""
    expected = layout.backbone
    keys = {k for k in state_dict if not k.endswith('num_batches_tracked')}
    assert keys == {k for k in expected
                    if not k.endswith('num_batches_tracked')}
    for k in keys:
        assert torch.equal(state_dict[k], expected[k]), k


IDS = [_layout_id(i) for i in range(len(BUILDERS))]


@pytest.fixture(scope='module')
def backbone():
    return _build_backbone()


def _expected_detection(layout: Layout) -> str:
    """The format auto-detection must name: the layout's own, except that a
    released file already in bare ResNet names is an ``mmdet`` one."""
    if layout.name in BARE:
        return layout.name
    bare = all(k.split('.')[0] in ('conv1', 'bn1', 'layer1', 'layer2',
                                   'layer3', 'layer4', 'fc')
               for k in _source_keys(layout))
    return 'mmdet' if bare else layout.name


@pytest.mark.parametrize('i', sweep(range(len(BUILDERS)), (
    'moco_v2', 'swav_training', 'densecl_released', 'barlowtwins_training',
    'vicreg_released', 'dino_teacher', 'mmpretrain_byol',
    'torchvision_layout'), IDS))
def test_every_layout_converts_to_the_backbone(i):
    """Fast tier, in memory: every layout (released and training files of
    every method) is auto-detected as its method and converts, auto and
    with the method given, to exactly the ResNet-50 backbone's tensors.
    The slow matrix below does the same through files, the command line,
    MMEngine's loader and SelfSupPretrained."""
    from mmconv.pipeline import convert_checkpoint
    layout = _layout(i)
    auto = convert_checkpoint(layout.checkpoint)
    assert auto.format.name == _expected_detection(layout), \
        auto.report.detection
    given = convert_checkpoint(layout.checkpoint, layout.name)
    for conv in (auto, given):
        _assert_backbone_equals(conv.state_dict, layout)
        assert conv.report.backbone.describe() == \
            'complete ResNet-50 backbone'


@pytest.mark.slow
@pytest.mark.parametrize('i', range(len(BUILDERS)), ids=IDS)
def test_cli_and_initializer_load_every_tensor(i, tmp_path, backbone):
    """The raw file, once saved: the CLI (auto and explicit --selfsup)
    output loads strictly into Mask R-CNN's ResNet-50 (zero missing or
    unexpected, every tensor equal to the source), and SelfSupPretrained on
    the raw file gives a freshly built backbone the same tensors."""
    from mmengine.runner import load_checkpoint
    layout = _layout(i)
    src = save_layout(layout, str(tmp_path))
    for args in ([], ['--selfsup', layout.name]):
        dst = tmp_path / f'out{len(args)}.pth'
        assert preset_main('selfsup2mmdet', [src, str(dst)] + args) == 0
        # MMEngine's loader, torch's default weights_only=True
        ckpt = load_checkpoint(backbone, str(dst), strict=True,
                               logger='silent')
        _assert_backbone_equals(backbone.state_dict(), layout)
        meta = ckpt['meta']
        assert meta['source_format'] == (
            layout.name if args else _expected_detection(layout))
        assert meta['backbone'] == 'complete ResNet-50 backbone'
    fresh = _build_backbone(
        init_cfg=dict(type='SelfSupPretrained', checkpoint=src))
    fresh.init_weights()
    _assert_backbone_equals(fresh.state_dict(), layout)


def _source_keys(layout: Layout):
    from mmconv import unwrap
    return list(unwrap(layout.checkpoint).state_dict)


def _find(builder: str) -> Layout:
    """The layout of one builder, by id (building no other)."""
    return _layout(IDS.index(builder))


def test_wrong_method_raises_clear_error(tmp_path):
    """A SwAV file with method='moco' raises naming swav; never random."""
    from mmdet.registry import MODELS
    layout = _find('swav_released')
    src = save_layout(layout, str(tmp_path))
    cfg = _mask_rcnn_cfg()
    cfg.model.backbone.init_cfg = dict(type='SelfSupPretrained',
                                       checkpoint=src, method='moco')
    model = MODELS.build(cfg.model)
    with pytest.raises(ConversionError, match="looks like 'swav'"):
        model.init_weights()


def test_unrelated_checkpoint_raises(tmp_path):
    """A checkpoint of another architecture: error with counts and keys."""
    import torchvision
    from mmdet.registry import MODELS
    src = tmp_path / 'r18.pth'
    torch.save(torchvision.models.resnet18().state_dict(), src)
    cfg = _mask_rcnn_cfg()
    cfg.model.backbone.init_cfg = dict(type='SelfSupPretrained',
                                       checkpoint=str(src))
    model = MODELS.build(cfg.model)
    with pytest.raises(ConversionError) as err:
        model.init_weights()
    msg = str(err.value)
    assert 'torchvision' in msg and 'of ResNet loaded' in msg
    assert 'layer1.0.conv3.weight' in msg


def test_hook_fails_when_pretrained_loaded_nothing(tmp_path):
    """MMEngine's Pretrained on an unconverted MoCo file loads nothing (only
    a warning); PretrainedLoadCheckHook turns that into an error, and
    reports full coverage for SelfSupPretrained and for Pretrained on the
    converted file."""
    from mmdet.registry import MODELS
    from mmconv.hooks import PretrainedLoadCheckHook
    layout = _find('moco_v1')
    src = save_layout(layout, str(tmp_path))
    converted = str(tmp_path / 'converted.pth')
    assert preset_main('selfsup2mmdet', [src, converted]) == 0
    for init, ok in ((dict(type='Pretrained', checkpoint=src), False),
                     (dict(type='SelfSupPretrained', checkpoint=src), True),
                     (dict(type='Pretrained', checkpoint=converted), True)):
        cfg = _mask_rcnn_cfg()
        cfg.model.backbone.init_cfg = init
        model = MODELS.build(cfg.model)
        runner = SimpleNamespace(model=model)
        hook = PretrainedLoadCheckHook()
        hook.before_run(runner)
        model.init_weights()
        if ok:
            hook.before_train(runner)
            row = next(r for r in hook.rows if r['module'] == 'backbone')
            n = len(list(model.backbone.parameters()))
            assert row['from_ckpt'] == n and row['changed'] > 0
            assert row['files'] == [init['checkpoint']]
            assert 'backbone' in hook.format_table()
        else:
            with pytest.raises(RuntimeError, match='random initialisation'):
                hook.before_train(runner)


def test_stage_outputs_equal_torchvision(tmp_path, backbone):
    """torchvision ResNet-50 and MMDetection's ResNet-50 loaded from the
    converted MoCo file give identical C2-C5 in eval mode."""
    import torchvision
    from mmengine.runner import load_checkpoint
    layout = _find('moco_v2')
    src = save_layout(layout, str(tmp_path))
    dst = tmp_path / 'out.pth'
    assert preset_main('selfsup2mmdet', [src, str(dst), '--selfsup', 'moco']) == 0
    load_checkpoint(backbone, str(dst), strict=True, logger='silent')
    ref = torchvision.models.resnet50()
    ref.load_state_dict({**layout.backbone, 'fc.weight': ref.fc.weight,
                         'fc.bias': ref.fc.bias})
    ref.eval()
    backbone.eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        outs = backbone(x)
        h = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        for i, stage in enumerate((ref.layer1, ref.layer2, ref.layer3,
                                   ref.layer4)):
            h = stage(h)
            assert torch.equal(h, outs[i]), f'C{i + 2}'


def test_mmdet_selfsup2mmdet_behaviour(tmp_path):
    """MMDetection's own script (re-implemented: keep keys starting with
    'module.encoder_q.', strip it) versus ours: same backbone tensors for
    MoCo minus its fc head; for SwAV MMDetection's yields nothing."""
    def mmdet_convert(ckpt):
        return {k[len('module.encoder_q.'):]: v
                for k, v in ckpt['state_dict'].items()
                if k.startswith('module.encoder_q.')}

    moco = _find('moco_v2')
    theirs = mmdet_convert(moco.checkpoint)
    src = save_layout(moco, str(tmp_path))
    assert preset_main('selfsup2mmdet', [src, str(tmp_path / 'o.pth'),
                               '--selfsup', 'moco']) == 0
    ours = load_file(str(tmp_path / 'o.pth'))['state_dict']
    assert set(theirs) - set(ours) == {k for k in theirs
                                       if k.startswith('fc.')}
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    swav = _find('swav_released')
    ckpt = swav.checkpoint if 'state_dict' in swav.checkpoint else {
        'state_dict': swav.checkpoint}
    assert mmdet_convert(ckpt) == {}
    src = save_layout(swav, str(tmp_path))
    assert preset_main('selfsup2mmdet', [src, str(tmp_path / 's.pth'),
                               '--selfsup', 'swav']) == 0


def test_dino_student_on_request(tmp_path):
    """DINO: teacher by default, student with --select/select=."""
    layout = _find('dino_teacher')
    student = build_dino_student()
    src = save_layout(layout, str(tmp_path))
    assert preset_main('selfsup2mmdet', [src, str(tmp_path / 's.pth'),
                               '--select', 'student']) == 0
    got = load_file(str(tmp_path / 's.pth'))['state_dict']
    assert all(torch.equal(got[k], v) for k, v in student.backbone.items())
    assert not torch.equal(got['conv1.weight'],
                           layout.backbone['conv1.weight'])


@pytest.mark.slow
def test_script_and_console_command(tmp_path):
    """The real script file and the installed `mmconv` command."""
    layout = _find('moco_v2')
    src = save_layout(layout, str(tmp_path))
    script = os.path.join(ROOT, 'tools', 'model_converters',
                          'selfsup2mmdet.py')
    out = subprocess.run([sys.executable, script, src,
                          str(tmp_path / 'a.pth'), '--verbose'],
                         capture_output=True, text=True, check=True).stdout
    assert 'module.encoder_q.layer1.0.conv1.weight -> layer1.0.conv1.weight'\
        in out
    assert 'format:   moco' in out and 'a.pth' in out
    mmconv = os.path.join(os.path.dirname(sys.executable), 'mmconv')
    out = subprocess.run([mmconv, 'inspect', src], capture_output=True,
                         text=True, check=True).stdout
    assert 'moco' in out and 'complete ResNet-50 backbone' in out
    bad = subprocess.run([mmconv, 'inspect', str(tmp_path / 'nope.pth')],
                         capture_output=True, text=True)
    assert bad.returncode == 3 and 'Traceback' not in bad.stderr
    assert bad.stderr.count('\n') == 1


def _dist_worker(rank, world, src, port, out_dir):
    import torch.distributed as dist
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    register_all_modules()
    cfg = _mask_rcnn_cfg()
    cfg.model.backbone.init_cfg = dict(type='SelfSupPretrained',
                                       checkpoint=src)
    torch.manual_seed(rank)  # different random init on each rank
    model = MODELS.build(cfg.model)
    model.init_weights()
    flat = torch.cat([t.flatten().double() for t in
                      model.backbone.state_dict().values()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    torch.save({'equal': all(torch.equal(g, flat) for g in gathered),
                'state_dict': model.backbone.state_dict()},
               os.path.join(out_dir, f'rank{rank}.pth'))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_ranks_identical(tmp_path):
    """Two gloo ranks: identical backbones, equal to the source."""
    import socket

    import torch.multiprocessing as mp
    layout = _find('moco_v2')
    src = save_layout(layout, str(tmp_path))
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_dist_worker, args=(2, src, port, str(tmp_path)), nprocs=2)
    for rank in range(2):
        got = torch.load(tmp_path / f'rank{rank}.pth')
        assert got['equal']
        _assert_backbone_equals(got['state_dict'], layout)
