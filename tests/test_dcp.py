# Copyright (c) mmconv contributors. All rights reserved.
"""torch.distributed.checkpoint directories (DINOv3 training checkpoints):
written here with ``torch.distributed.checkpoint.save`` in DINOv3's key
layout, auto-detected, the EMA/teacher backbone converted by default, the
student on request; pickles in them never run; broken ones fail in one
line."""
import os
import pickle
import subprocess
from typing import Dict, Optional

import pytest
import torch

from mmconv import convert_checkpoint
from mmconv.cli import main
from mmconv.dcp import DCPCheckpoint, NotRead, load_dcp, read_metadata
from mmconv.errors import InputError
from mmconv.fetching import load_source
from tests.fixtures import dinov3_convnext_layouts as L

dcp = pytest.importorskip('torch.distributed.checkpoint')

DEPTHS, DIMS = (1, 1, 2, 1), (8, 16, 24, 32)
BIG = (16, 32, 48, 64)  # a distillation teacher: another width
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Set by :func:`_fire` if any pickle in a test directory ever runs.
FIRED = []


def _fire(*args) -> None:
    FIRED.append(args)


class Canary:
    """An object whose unpickling calls :func:`_fire` (what a malicious
    pickle would do)."""

    def __reduce__(self):
        return (_fire, ('unpickled', ))


def official(seed: int, dims=DIMS) -> Dict[str, torch.Tensor]:
    """An official DINOv3 ConvNeXt state dict (random values, the final
    norm under both names)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=gen)
          for k, s in L.official_manifest(DEPTHS, dims).items()
          if not k.startswith('norms.3.')}
    sd['norms.3.weight'] = sd['norm.weight']
    sd['norms.3.bias'] = sd['norm.bias']
    return sd


def net(backbone: Dict[str, torch.Tensor], seed: int) -> Dict[str, object]:
    """One ModuleDict of ``SSLMetaArch`` (backbone, dino/ibot heads)."""
    gen = torch.Generator().manual_seed(seed)
    out = {f'backbone.{k}': v.clone() for k, v in backbone.items()}
    out['dino_head.mlp.0.weight'] = torch.randn(6, 4, generator=gen)
    out['ibot_head.last_layer.weight_g'] = torch.randn(6, 1, generator=gen)
    return out


def save_training(path: str, student: Dict, ema: Dict,
                  teacher: Optional[Dict] = None, canary: bool = True
                  ) -> None:
    """``dinov3/checkpointer.save_checkpoint`` of an ``SSLMetaArch``:
    ``{'iteration', 'model': get_model_state_dict(...), 'optimizer'}``;
    ``teacher`` None: the teacher is the EMA module (saved under both
    names), else a distillation teacher."""
    model = {}
    for name, sd, seed in (('student', student, 1), ('teacher',
                           teacher or ema, 2), ('model_ema', ema, 2)):
        model.update({f'{name}.{k}': v for k, v in net(sd, seed).items()})
    model['dino_loss.center'] = torch.zeros(1, 6)
    model['ibot_patch_loss.center'] = torch.zeros(1, 6)
    optimizer = {
        'state': {f'student.backbone.{k}': {'exp_avg': torch.zeros_like(v),
                                            'step': torch.tensor(3.)}
                  for k, v in list(student.items())[:3]},
        'param_groups': [{'lr': 1e-3, 'params': ['student.backbone.x']}],
    }
    state = {'iteration': Canary() if canary else 99, 'model': model,
             'optimizer': optimizer}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(path), no_dist=True)


@pytest.fixture
def training(tmp_path):
    path = str(tmp_path / 'ckpt' / '99')
    sds = dict(student=official(1), ema=official(2))
    save_training(path, sds['student'], sds['ema'])
    FIRED.clear()
    return path, sds


def _expected(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return convert_checkpoint(dict(sd)).state_dict


def _assert_same(got: Dict[str, torch.Tensor],
                 want: Dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value)


@pytest.mark.parametrize('select,which', [(None, 'ema'), ('teacher', 'ema'),
                                          ('ema', 'ema'),
                                          ('student', 'student')])
def test_training_directory_converts_the_ema_by_default(
        training, tmp_path, select, which, capsys):
    path, sds = training
    dst = str(tmp_path / 'out.pth')
    argv = ['convert', path, dst] + (['--select', select] if select else [])
    assert main(argv) == 0
    out = torch.load(dst, map_location='cpu', weights_only=True)
    assert out['meta']['source_format'] == 'dinov3_convnext'
    _assert_same(out['state_dict'], _expected(sds[which]))
    text = capsys.readouterr().out
    assert 'optimizer' in text and 'iteration' in text  # not converted
    assert not FIRED  # the pickled iteration was never loaded


def test_directory_is_detected_whatever_its_name(training, tmp_path):
    path, sds = training
    renamed = str(tmp_path / 'weights.pth')  # a name that says nothing
    os.rename(path, renamed)
    ckpt = load_source(renamed)
    assert isinstance(ckpt, DCPCheckpoint)
    assert ckpt.layout == 'dinov3-training'
    assert list(ckpt) == ['teacher', 'student', 'model_ema', 'heads',
                          'iteration', 'optimizer']
    assert isinstance(ckpt['optimizer'], NotRead)
    _assert_same(convert_checkpoint(ckpt).state_dict, _expected(sds['ema']))


def test_only_the_chosen_backbone_is_read(training):
    """Records outside the chosen backbone are never read: garbage in the
    student's and the optimizer's records does not matter."""
    path, sds = training
    meta = read_metadata(path)
    for index, info in meta.storage_data.items():
        if not index.fqn.startswith('model.model_ema.backbone.') and \
                not index.fqn.startswith('model.teacher.backbone.'):
            with open(os.path.join(path, info.relative_path), 'r+b') as f:
                f.seek(info.offset)
                f.write(b'\0' * info.length)
    _assert_same(convert_checkpoint(load_source(path)).state_dict,
                 _expected(sds['ema']))
    with pytest.raises(InputError, match='not a readable torch.distributed'):
        convert_checkpoint(load_source(path), select='student')
    assert not FIRED


def test_distillation_directory(tmp_path, capsys):
    """With distillation, ``teacher`` is the frozen model distilled from:
    the default is still the EMA of the student."""
    path = str(tmp_path / 'distill')
    student, ema, big = official(1), official(2), official(3, BIG)
    save_training(path, student, ema, teacher=big, canary=False)
    ckpt = load_source(path)
    assert 'distillation_teacher' in ckpt
    _assert_same(convert_checkpoint(ckpt).state_dict, _expected(ema))
    _assert_same(convert_checkpoint(ckpt, select='student').state_dict,
                 _expected(student))
    assert main(['convert', path, str(tmp_path / 'o.pth')]) == 0
    assert 'distillation_teacher' in capsys.readouterr().out


def test_sharded_eval_checkpoint(tmp_path):
    """``sharded_teacher_checkpoint``: ``model_ema`` saved as ``model``."""
    path = str(tmp_path / 'sharded_teacher_checkpoint')
    ema = official(4)
    dcp.save({'iteration': 5, 'model': net(ema, 4)},
             storage_writer=dcp.FileSystemWriter(path), no_dist=True)
    ckpt = load_source(path)
    assert ckpt.layout == 'dinov3-eval' and list(ckpt) == ['teacher',
                                                           'iteration']
    _assert_same(convert_checkpoint(ckpt).state_dict, _expected(ema))
    with pytest.raises(Exception, match="no 'student' entry"):
        convert_checkpoint(ckpt, select='student')


def test_vit_layout_reads_the_chosen_backbone(tmp_path):
    """The ViT key layout (RoPE periods, storage tokens, masked qkv
    bias): the right network's tensors, bit for bit, dtypes kept."""
    path = str(tmp_path / 'vit')

    def vit(seed):
        g = torch.Generator().manual_seed(seed)
        return {'cls_token': torch.randn(1, 1, 8, generator=g),
                'storage_tokens': torch.randn(1, 4, 8, generator=g),
                'patch_embed.proj.weight': torch.randn(8, 3, 16, 16,
                                                       generator=g),
                'rope_embed.periods': torch.rand(2, generator=g),
                'blocks.0.attn.qkv.weight': torch.randn(
                    24, 8, generator=g).bfloat16(),
                'blocks.0.attn.qkv.bias_mask': torch.ones(24),
                'norm.weight': torch.randn(8, generator=g)}
    student, ema = vit(1), vit(2)
    save_training(path, student, ema, canary=False)
    ckpt = load_source(path)
    from mmconv.containers import unwrap
    for select, want in ((None, ema), ('student', student)):
        got = unwrap(ckpt, select).state_dict
        _assert_same(got, {f'backbone.{k}': v for k, v in want.items()})


def test_metadata_pickle_may_not_run_code(training, capsys):
    """A ``.metadata`` naming any other global is refused (exit 4); nothing
    runs."""
    path, _ = training
    with open(os.path.join(path, '.metadata'), 'wb') as f:
        pickle.dump(Canary(), f)
    assert main(['convert', path, path + '.out.pth']) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'tests.test_dcp._fire' in err
    assert not FIRED and not os.path.exists(path + '.out.pth')


def _corrupt(path: str, how: str) -> None:
    meta = os.path.join(path, '.metadata')
    data = sorted(f for f in os.listdir(path) if f.endswith('.distcp'))[0]
    if how == 'truncated-data':
        with open(os.path.join(path, data), 'r+b') as f:
            f.truncate(os.path.getsize(os.path.join(path, data)) // 2)
    elif how == 'missing-data':
        os.remove(os.path.join(path, data))
    elif how == 'empty-metadata':
        open(meta, 'wb').close()
    elif how == 'garbage-metadata':
        with open(meta, 'wb') as f:
            f.write(b'\x80\x04not a pickle at all')
    elif how == 'not-metadata':
        with open(meta, 'wb') as f:
            pickle.dump({'a': 1}, f)
    elif how in ('path-escape', 'garbled-records', 'huge-size'):
        md = read_metadata(path)
        for fqn, item in md.state_dict_metadata.items():
            if how == 'huge-size' and fqn.startswith('model.model_ema.'):
                item.size = torch.Size([1 << 20, 1 << 20])
        for index, info in md.storage_data.items():
            if how == 'path-escape':
                info.relative_path = '../' + info.relative_path
            elif index.fqn.startswith('model.model_ema.backbone.'):
                with open(os.path.join(path, info.relative_path),
                          'r+b') as f:
                    f.seek(info.offset)
                    f.write(b'\xff' * info.length)
        with open(meta, 'wb') as f:
            pickle.dump(md, f)


@pytest.mark.parametrize('how', ['truncated-data', 'missing-data',
                                 'empty-metadata', 'garbage-metadata',
                                 'not-metadata', 'path-escape',
                                 'garbled-records', 'huge-size'])
def test_broken_directories_fail_in_one_line(training, how, capsys):
    path, _ = training
    _corrupt(path, how)
    dst = path + '.out.pth'
    assert main(['convert', path, dst]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and path in err, err
    assert 'Traceback' not in err and not os.path.exists(dst)
    assert not FIRED


def test_directory_without_tensors(tmp_path):
    path = str(tmp_path / 'empty')
    dcp.save({'iteration': 3}, storage_writer=dcp.FileSystemWriter(path),
             no_dist=True)
    with pytest.raises(InputError, match='holds no tensors'):
        load_dcp(path)


def test_selfsup_pretrained_from_a_directory(training):
    """``init_cfg=dict(type='SelfSupPretrained', checkpoint=DIR)`` with no
    other option loads the EMA backbone."""
    from mmpretrain.models.backbones.convnext import ConvNeXt
    from mmconv.init import SelfSupPretrainedInit
    path, sds = training
    model = ConvNeXt(arch=dict(depths=list(DEPTHS), channels=list(DIMS)),
                     out_indices=[3], gap_before_final_norm=False)
    init = SelfSupPretrainedInit(checkpoint=path)
    init(model)
    assert init.format_name == 'dinov3_convnext'
    _assert_same({k: v for k, v in model.state_dict().items()},
                 _expected(sds['ema']))


TORCH21 = os.path.join(ROOT, '.venv-torch21', 'bin', 'python')


@pytest.mark.skipif(not os.path.exists(TORCH21),
                    reason='no torch 2.1 environment')
def test_old_torch_refuses_unless_unsafe(training):
    """Before torch 2.6 torch reads the tensor records with a loader that
    is no safety boundary: refused (exit 4) unless --unsafe-load."""
    path, sds = training
    code = ('import sys; from mmconv.cli import main; '
            'sys.exit(main(sys.argv[1:]))')
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = subprocess.run([TORCH21, '-c', code, 'convert', path,
                          path + '.o.pth'], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 4, run.stderr
    assert 'torch.distributed.checkpoint' in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def official_vit(seed: int, depth: int = 2) -> Dict[str, torch.Tensor]:
    """An official DINOv3 ViT-S/16 state dict at reduced depth (real
    widths; recorded layout of tests/fixtures/dinov3_layouts.py), with the
    released K-bias mask."""
    from tests.fixtures import dinov3_layouts as V
    gen = torch.Generator().manual_seed(seed)
    facts = V.OFFICIAL['vits16']
    sd = {n: torch.randn(s, generator=gen) for n, s, _ in facts['top']}
    for i in range(depth):
        for n, s, _ in facts['block']:
            sd[f'blocks.{i}.{n}'] = torch.randn(s, generator=gen)
        mask = torch.ones_like(sd[f'blocks.{i}.attn.qkv.bias_mask'])
        third = mask.numel() // 3
        mask[third:2 * third] = 0
        sd[f'blocks.{i}.attn.qkv.bias_mask'] = mask
    return sd


@pytest.mark.parametrize('select', [None, 'student'])
def test_vit_training_directory_converts_like_the_flat_file(tmp_path,
                                                            select):
    path = str(tmp_path / 'vit-ckpt')
    student, ema = official_vit(1), official_vit(2)
    save_training(path, student, ema, canary=False)
    conv = convert_checkpoint(load_source(path), select=select)
    assert conv.format.name == 'dinov3_vit'
    flat = convert_checkpoint(dict(student if select else ema))
    _assert_same(conv.state_dict, flat.state_dict)
