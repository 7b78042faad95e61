# Copyright (c) mmconv contributors. All rights reserved.
"""transformers' ResNet layouts (``hf_resnet`` of mmconv/formats/resnet.py,
``microsoft/resnet-50``) -> MMDetection ``ResNet``: the recorded layouts
are what transformers writes (4.57 writes the same); a ResNet-50 and a
ResNet-18 are auto-detected, converted by value, strict-loaded into the
shipped config's backbone (zero missing, zero unexpected) and compute
transformers' ``hidden_states``; config.json facts the weights cannot
show (stride placement) are checked."""
import json
import os
import re
import shutil

import pytest
import torch

from mmconv import convert_checkpoint
from mmconv.detect import candidates
from tests.fixtures import hf_backbone_layouts as F
from tests.helpers import hf_backbones as H

pytest.importorskip('transformers')

CONFIG = 'selfsup_pretrain/mask-rcnn_r50-mocov2-selfsup-raw-pre_fpn_1x_coco.py'
#: layout -> (depth, prefix of the base model)
CASES = {'ResNetForImageClassification': (50, 'resnet.'),
         'ResNetModel-basic': (18, '')}


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    """One save_pretrained folder per case (the ResNet-50 is ~100 MB), with
    the transformers model it came from; removed after the module."""
    root = tmp_path_factory.mktemp('hf_resnet')
    made = {}
    for name in CASES:
        model = H.build_hf(name)
        folder = str(root / name)
        made[name] = (folder, model, H.save_folder(model, folder))
    yield made
    shutil.rmtree(str(root), ignore_errors=True)


def backbone(depth: int):
    """The shipped config's ResNet backbone at ``depth``."""
    return H.build_backbone(CONFIG, dict(depth=depth))


def expected(hf: H.Tensors) -> H.Tensors:
    """What MMDetection's ResNet must hold, from transformers' saved names
    (base model, no prefix): convert_resnet_to_pytorch.py read backwards
    (stage N = layer N+1, layer.K = conv/bn K+1, shortcut = downsample)."""
    out: H.Tensors = {}
    for key, value in hf.items():
        m = re.match(r'encoder\.stages\.(\d)\.layers\.(\d+)\.(.+)$', key)
        if m:
            s, b, rest = m.groups()
            dst = f'layer{int(s) + 1}.{b}.'
            rest = re.sub(r'^layer\.(\d)\.convolution',
                          lambda k: f'conv{int(k.group(1)) + 1}', rest)
            rest = re.sub(r'^layer\.(\d)\.normalization',
                          lambda k: f'bn{int(k.group(1)) + 1}', rest)
            rest = rest.replace('shortcut.convolution', 'downsample.0')
            rest = rest.replace('shortcut.normalization', 'downsample.1')
            out[dst + rest] = value
        elif key.startswith('embedder.embedder.convolution.'):
            out['conv1.' + key.rsplit('.', 1)[1]] = value
        elif key.startswith('embedder.embedder.normalization.'):
            out['bn1.' + key.rsplit('.', 1)[1]] = value
    return out


@pytest.mark.parametrize('name', ['ResNetModel',
                                  'ResNetForImageClassification',
                                  'ResNetModel-basic'])
def test_recorded_layout_is_what_transformers_saves(name, folders,
                                                    tmp_path):
    """The fixture is transformers 5.25's own output (4.57's file is the
    same, recorded); ``state_dict()`` too."""
    if name in folders:
        folder, model, saved = folders[name]
    else:
        model = H.build_hf(name)
        folder = str(tmp_path / 'saved')
        saved = H.save_folder(model, folder)
    assert sorted(H.rows(saved)) == sorted(H.saved_layout(name))
    with open(os.path.join(folder, 'config.json')) as f:
        config = json.load(f)
    assert {k: config[k] for k in H.saved_config(name)} == \
        H.saved_config(name)
    assert name in F.SAME_IN_4_57
    assert sorted(H.rows(model.state_dict())) == sorted(H.rows(saved))
    shutil.rmtree(str(tmp_path), ignore_errors=True)


@pytest.mark.parametrize('name', list(CASES))
def test_converts_loads_and_computes_transformers_features(name, folders):
    depth, prefix = CASES[name]
    folder, hf_model, saved = folders[name]
    base = H.strip(saved, prefix)
    conv = convert_checkpoint(saved)  # the lone file's tensors
    assert conv.format.name == 'hf_resnet'
    found = candidates(list(saved))
    assert len(found) == 1 or found[1].rank < found[0].rank, found
    want = expected(base)
    assert set(conv.state_dict) == set(want)
    for key, value in want.items():
        assert conv.state_dict[key] is value or torch.equal(
            conv.state_dict[key], value), key
    assert not conv.changed  # renaming only
    report = conv.report
    assert sorted(r.old for r in report.kept + report.aliases +
                  report.dropped) == sorted(saved)
    assert {r.old for r in report.dropped} == \
        {k for k in saved if k.startswith('classifier.')}
    assert conv.meta['depth'] == depth
    assert conv.meta['style'] == 'pytorch'
    assert 'ASSUMED' not in conv.summary()
    # zero missing, zero unexpected in the shipped config's backbone
    model = backbone(depth)
    model.load_state_dict(conv.state_dict, strict=True)
    img = torch.randn(2, 3, 64, 64,
                      generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf_model(img, output_hidden_states=True)
        outs = model(img)
    diffs = [H.max_abs(o, r) for o, r in zip(outs, ref.hidden_states[1:])]
    print(f'\n{name}: max |diff| per stage vs transformers {diffs}')
    assert len(diffs) == 4 and max(diffs) < 1e-4, diffs
    assert ref.hidden_states[-1].abs().max() > 0.1


def test_classifier_kept_for_torchvision(folders, tmp_path):
    """``--to torchvision --keep-fc``: classifier.1 is torchvision's fc;
    the file loads strictly into torchvision's resnet50."""
    torchvision = pytest.importorskip('torchvision')
    from mmconv.cli import main
    folder, hf_model, saved = folders['ResNetForImageClassification']
    dst = str(tmp_path / 'tv.pth')
    assert main(['convert', folder, dst, '--to', 'torchvision',
                 '--keep-fc']) == 0
    out = torch.load(dst, weights_only=True)
    assert torch.equal(out['fc.weight'], saved['classifier.1.weight'])
    net = torchvision.models.resnet50(num_classes=5)
    net.load_state_dict(out, strict=True)
    os.remove(dst)


def _with_config(folder: str, tmp_path, **changes) -> str:
    """A copy of ``folder`` (weights hard-linked) with config changes."""
    copy = str(tmp_path / 'changed')
    os.makedirs(copy)
    os.link(os.path.join(folder, 'model.safetensors'),
            os.path.join(copy, 'model.safetensors'))
    with open(os.path.join(folder, 'config.json')) as f:
        config = json.load(f)
    config.update(changes)
    with open(os.path.join(copy, 'config.json'), 'w') as f:
        json.dump(config, f)
    return copy


@pytest.mark.parametrize('change,fix', [
    ({'downsample_in_bottleneck': True}, 'convert with --style caffe'),
    ({'downsample_in_first_stage': True}, 'no equivalent backbone'),
    ({'depths': [3, 4, 23, 3]},
     'depths=[3, 4, 23, 3] but the weights have [3, 4, 6, 3]'),
])
def test_config_facts_the_weights_cannot_show(change, fix, folders,
                                              tmp_path, capsys):
    """Where the stride sits is in config.json only: a folder whose config
    says the first 1x1 conv strides needs --style caffe (then converts as
    caffe style); a first stage that strides is refused, and so is a config
    that does not describe the weights; one line each, nothing written."""
    from mmconv.cli import main
    folder = _with_config(folders['ResNetForImageClassification'][0],
                          tmp_path, **change)
    dst = tmp_path / 'out.pth'
    assert main(['convert', folder, str(dst)]) == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fix in err, err
    assert not dst.exists()
    if 'downsample_in_bottleneck' in change:
        assert main(['convert', folder, str(dst), '--style', 'caffe']) == 0
        meta = torch.load(str(dst), weights_only=True)['meta']
        assert meta['style'] == 'caffe'
        # the input stays transformers' RGB ImageNet normalisation
        assert meta['input_format'] == 'RGB', meta
        assert meta['pixel_mean'][0] > meta['pixel_mean'][2], meta
        os.remove(str(dst))
