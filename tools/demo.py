# Copyright (c) mmconv contributors. All rights reserved.
"""The mmconv demo: MoCo v2 checkpoint -> MMDetection Mask R-CNN backbone.

1. Builds a MoCo v2 checkpoint in the official layout (query and key
   encoders, MLP head, queue, optimizer state) from a real torchvision
   ResNet-50 with random weights.
2. Converts it with ``tools/model_converters/selfsup2mmdet.py`` (a real
   subprocess, as a user runs it) and prints the report.
3. Builds Mask R-CNN R50-FPN from MMDetection's own config, loads the
   converted file into its backbone, and checks every tensor and the
   C2-C5 outputs against torchvision's ResNet-50.
"""
import os
import subprocess
import sys
import shutil
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.fixtures.official_layouts import build_moco_v2, save_layout  # noqa


def main() -> int:
    """Run the demo in a temporary directory, removed afterwards."""
    work = tempfile.mkdtemp(prefix='mmconv-demo-')
    try:
        return run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: str) -> int:
    """Make, convert and load the MoCo v2 checkpoint inside ``work``."""
    layout = build_moco_v2()
    src = save_layout(layout, work)
    dst = os.path.join(work, 'mocov2_r50_mmdet.pth')
    print(f'[1/3] MoCo v2 checkpoint in the official layout: {src} '
          f'({os.path.getsize(src) / 2**20:.0f} MiB)')
    print('[2/3] python tools/model_converters/selfsup2mmdet.py SRC DST '
          '--selfsup moco')
    proc = subprocess.run([
        sys.executable,
        os.path.join(ROOT, 'tools', 'model_converters', 'selfsup2mmdet.py'),
        src, dst, '--selfsup', 'moco'
    ])
    if proc.returncode:
        return proc.returncode

    print('[3/3] loading into MMDetection Mask R-CNN R50-FPN backbone')
    from mmengine.hub import get_config
    from mmengine.runner import load_checkpoint
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = get_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None
    backbone = MODELS.build(cfg.model.backbone)
    backbone.eval()  # mmdet's ResNet.train() returns None, so not chained
    load_checkpoint(backbone, dst, strict=True, logger='silent')
    expected = layout.backbone
    same = sum(torch.equal(backbone.state_dict()[k], v)
               for k, v in expected.items())
    print(f'      {same}/{len(expected)} backbone tensors equal the MoCo '
          'query encoder (strict load: no missing/unexpected keys)')
    import torchvision
    reference = torchvision.models.resnet50()
    reference.load_state_dict({**expected, 'fc.weight':
                               reference.fc.weight, 'fc.bias':
                               reference.fc.bias})
    reference.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        outs = backbone(x)
        h = reference.maxpool(reference.relu(reference.bn1(
            reference.conv1(x))))
        diffs = []
        for i, stage in enumerate((reference.layer1, reference.layer2,
                                   reference.layer3, reference.layer4)):
            h = stage(h)
            diffs.append(float((h - outs[i]).abs().max()))
    print('      C2-C5 max |torchvision - MMDetection|: ' +
          ', '.join(f'{d:.1e}' for d in diffs))
    ok = same == len(expected) and max(diffs) == 0.0
    print('demo OK' if ok else 'demo FAILED')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
