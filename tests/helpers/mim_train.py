# Copyright (c) mmconv contributors. All rights reserved.
"""Shared steps of the slow config tests: the tiny-COCO data options, the
`mim train mmdet` (or two-rank `torchrun`) command, the load-check hook's
table row and the logged losses."""
import glob
import json
import math
import os
import re
import subprocess
import sys
from typing import List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
SPLITS = ('train', 'val', 'test')


def data_options(data: str, roots: Sequence[str] = SPLITS) -> List[str]:
    """``--cfg-options`` pointing the ``roots`` dataloaders and both
    evaluators at the tiny COCO set ``data``; no worker processes."""
    ann = os.path.join(data, 'annotations', 'instances_val2017.json')
    opts = [f'{split}_dataloader.dataset.data_root={data}/'
            for split in roots]
    opts += [f'{e}_evaluator.ann_file={ann}' for e in ('val', 'test')]
    for split in SPLITS:
        opts += [f'{split}_dataloader.num_workers=0',
                 f'{split}_dataloader.persistent_workers=False']
    return opts


def run_train(config: str, work, options: Sequence[str],
              launcher: Optional[int] = None) -> str:
    """Train ``config`` into ``work``: `mim train mmdet` in one process, or
    with ``launcher`` (a free port) `torchrun` on two CPU ranks through
    tests/helpers/cpu_dist_train.py. Asserts exit 0; returns the output."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
               os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    if launcher is None:
        cmd = [os.path.join(BIN, 'mim'), 'train', 'mmdet', config]
    else:
        cmd = [os.path.join(BIN, 'torchrun'), '--nproc_per_node', '2',
               '--master_port', str(launcher),
               os.path.join(ROOT, 'tests', 'helpers', 'cpu_dist_train.py'),
               config, '--launcher', 'pytorch']
    cmd += ['--work-dir', str(work), '--cfg-options'] + list(options)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def backbone_row(output: str) -> 're.Match':
    """The backbone's row of the load-check hook's table (params, changed,
    from ckpt, checkpoint), logged before the first iteration."""
    row = re.search(r'^backbone\s+(\d+)\s+(\d+)\s+(\S+)\s+(.+)$', output,
                    re.M)
    assert row, output[-3000:]
    return row


def assert_losses_finite(work) -> None:
    """At least two logged losses, all finite."""
    scalars = glob.glob(str(work / '*' / 'vis_data' / 'scalars.json'))
    losses = [json.loads(line)['loss'] for line in open(scalars[0])
              if '"loss"' in line]
    assert len(losses) >= 2 and all(math.isfinite(x) for x in losses)
