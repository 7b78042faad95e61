# Copyright (c) mmconv contributors. All rights reserved.
"""Speed and memory of converting a DINOv2 ViT-L/14 training checkpoint.

Builds, in ``--work-dir`` (default ``/tmp/mmconv-bench``), a checkpoint in
the layout of a consolidated DINOv2 training state (``SSLMetaArch`` with
``vitl14.yaml``: ViT-L/14 at 518 px, 4 block chunks, LayerScale; DINO and
iBOT heads with 131072 prototypes and a 384-d bottleneck; teacher and
student; AdamW state of the student) of about 6.7 GB::

    {'model': {'student.backbone.*', 'student.dino_head.*',
               'student.ibot_head.*', 'teacher.backbone.*',
               'teacher.dino_head.*', 'teacher.ibot_head.*',
               'dino_loss.center', 'ibot_patch_loss.center'},
     'optimizer': {'state': {i: {'step', 'exp_avg', 'exp_avg_sq'}},
                   'param_groups': [...]},
     'iteration': 124999}

and measures, interleaved over ``--repeats`` rounds after a warm-up round
(warm page cache; before each command the destination is deleted and
``sync`` runs), each command in a fresh process:

* ``floor``: ``python -c "import torch"``;
* ``mmconv``: ``python -m mmconv convert SRC DST --force`` (auto-detected
  ``dinov2``, teacher selected, atomic write with fsync);
* ``mmap5``: a 5-line ``torch.load(mmap=True)`` filter keeping
  ``teacher.backbone.*`` + ``torch.save`` + fsync of its output (the
  baseline);
* ``init_selfsup`` / ``init_pretrained``: mmconv's ``ViTDet`` ViT-L/14
  initialised by ``SelfSupPretrained`` on the raw training file vs MMEngine's
  ``Pretrained`` on the converted file.

Targets (issue 12): peak RSS above the floor at most 1.2x the bytes of the
kept teacher backbone; conversion work (wall minus floor) at most 1.2x the
baseline's; ``SelfSupPretrained`` within 1.2x of ``Pretrained``. Writes
``benchmarks/results/dinov2_latest.{json,md}``.
"""
import argparse
import os
import subprocess
import sys
import textwrap
import time
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_convert import (PY, interleaved, table_lines,  # noqa: E402
                           write_results)

#: vitl14.yaml: ViT-L/14, 518 px (37 x 37 patches + the class slot).
DIM, DEPTH, CHUNKS, GRID, PATCH = 1024, 24, 4, 37, 14
#: dino / ibot heads: 3-layer MLP 1024 -> 2048 -> 2048 -> 384, 131072
#: weight-normalised prototypes.
HIDDEN, BOTTLENECK, PROTOTYPES = 2048, 384, 131072

MMAP5 = textwrap.dedent('''
    import os, sys, torch
    sd = torch.load(sys.argv[1], mmap=True, weights_only=True)['model']
    out = {k[17:]: v for k, v in sd.items() if k.startswith('teacher.backbone.')}
    torch.save({'state_dict': out}, sys.argv[2])
    f = os.open(sys.argv[2], os.O_RDONLY); os.fsync(f); os.close(f)
''')

INIT = textwrap.dedent('''
    import sys, mmconv, mmconv.models
    kind, path = sys.argv[1], sys.argv[2]
    mmconv.models.ViTDet(
        img_size=518, patch_size=14, embed_dim=1024, depth=24, num_heads=16,
        layer_scale=1e-5, final_norm=True, window_size=0,
        init_cfg=dict(type=kind, checkpoint=path)).init_weights()
''')


def backbone_shapes() -> List[Tuple[str, Tuple[int, ...]]]:
    """``DinoVisionTransformer(vit_large, patch 14, block_chunks=4)``
    parameter names and shapes (``head`` is ``nn.Identity``)."""
    shapes = [('cls_token', (1, 1, DIM)),
              ('pos_embed', (1, 1 + GRID * GRID, DIM)),
              ('mask_token', (1, DIM)),
              ('patch_embed.proj.weight', (DIM, 3, PATCH, PATCH)),
              ('patch_embed.proj.bias', (DIM, ))]
    per_chunk = DEPTH // CHUNKS
    for i in range(DEPTH):
        b = f'blocks.{i // per_chunk}.{i}.'
        shapes += [(b + 'norm1.weight', (DIM, )), (b + 'norm1.bias', (DIM, )),
                   (b + 'attn.qkv.weight', (3 * DIM, DIM)),
                   (b + 'attn.qkv.bias', (3 * DIM, )),
                   (b + 'attn.proj.weight', (DIM, DIM)),
                   (b + 'attn.proj.bias', (DIM, )),
                   (b + 'ls1.gamma', (DIM, )),
                   (b + 'norm2.weight', (DIM, )), (b + 'norm2.bias', (DIM, )),
                   (b + 'mlp.fc1.weight', (4 * DIM, DIM)),
                   (b + 'mlp.fc1.bias', (4 * DIM, )),
                   (b + 'mlp.fc2.weight', (DIM, 4 * DIM)),
                   (b + 'mlp.fc2.bias', (DIM, )),
                   (b + 'ls2.gamma', (DIM, ))]
    return shapes + [('norm.weight', (DIM, )), ('norm.bias', (DIM, ))]


def head_shapes() -> List[Tuple[str, Tuple[int, ...]]]:
    """``DINOHead`` (dinov2/layers/dino_head.py) names and shapes."""
    return [('mlp.0.weight', (HIDDEN, DIM)), ('mlp.0.bias', (HIDDEN, )),
            ('mlp.2.weight', (HIDDEN, HIDDEN)), ('mlp.2.bias', (HIDDEN, )),
            ('mlp.4.weight', (BOTTLENECK, HIDDEN)),
            ('mlp.4.bias', (BOTTLENECK, )),
            ('last_layer.weight_g', (PROTOTYPES, 1)),
            ('last_layer.weight_v', (PROTOTYPES, BOTTLENECK))]


def make_dinov2(path: str) -> int:
    """Write the training checkpoint; return the bytes of the teacher
    backbone tensors the conversion keeps (all but the class and mask
    tokens; ``pos_embed`` without its class slot)."""
    gen = torch.Generator().manual_seed(0)
    model: Dict[str, torch.Tensor] = {}
    student = []
    for net in ('student', 'teacher'):
        for part, table in (('backbone', backbone_shapes()),
                            ('dino_head', head_shapes()),
                            ('ibot_head', head_shapes())):
            for name, shape in table:
                t = torch.randn(shape, generator=gen)
                model[f'{net}.{part}.{name}'] = t
                if net == 'student':
                    student.append(t)
    model['dino_loss.center'] = torch.zeros(1, PROTOTYPES)
    model['ibot_patch_loss.center'] = torch.zeros(1, 1, PROTOTYPES)
    state = {i: {'step': torch.tensor(125000.),
                 'exp_avg': torch.zeros_like(t),
                 'exp_avg_sq': torch.zeros_like(t)}
             for i, t in enumerate(student)}
    groups = [{'lr': 0.0, 'betas': (0.9, 0.999), 'eps': 1e-8,
               'weight_decay': 0.04, 'amsgrad': False,
               'params': list(range(len(student)))}]
    torch.save({'model': model, 'optimizer': {'state': state,
                                              'param_groups': groups},
                'iteration': 124999}, path)
    kept = 0
    for name, shape in backbone_shapes():
        if name in ('cls_token', 'mask_token'):
            continue
        numel = torch.Size(shape).numel()
        if name == 'pos_embed':
            numel -= DIM  # the class slot
        kept += 4 * numel
    return kept


def run(work: str, repeats: int) -> Tuple[dict, int, str]:
    """Measure every candidate, interleaved; return the medians."""
    src = os.path.join(work, 'dinov2_vitl14_training.pth')
    meta = src + '.kept_bytes'
    if not (os.path.exists(src) and os.path.exists(meta)):
        kept = make_dinov2(src)
        with open(meta, 'w') as f:
            f.write(str(kept))
    kept = int(open(meta).read())
    converted = os.path.join(work, 'dinov2_vitl14_converted.pth')
    out = os.path.join(work, 'out.pth')
    mmconv = [PY, '-m', 'mmconv', 'convert']
    subprocess.run(mmconv + [src, converted, '--force'], check=True,
                   stdout=subprocess.DEVNULL)
    cands = {'floor': [PY, '-c', 'import torch'],
             'mmconv': mmconv + [src, out, '--force'],
             'mmap5': [PY, '-c', MMAP5, src, out],
             'init_selfsup': [PY, '-c', INIT, 'SelfSupPretrained', src],
             'init_pretrained': [PY, '-c', INIT, 'Pretrained', converted]}
    med = interleaved(cands, out, repeats)
    return med, kept, src


def ratios(med: dict, kept: int) -> List[Tuple[str, float, float]]:
    """The targets, as (name, value, limit)."""
    floor = med['floor']
    work = lambda m: max(m['wall'] - floor['wall'], 1e-9)  # noqa: E731
    kept_mib = kept / 2**20
    return [
        ('peak memory above floor / kept teacher backbone bytes',
         (med['mmconv']['rss_mb'] - floor['rss_mb']) / kept_mib, 1.2),
        ('conversion work, mmconv / 5-line mmap filter + fsync',
         work(med['mmconv']) / work(med['mmap5']), 1.2),
        ('memory, 5-line mmap filter / kept bytes (reference)',
         (med['mmap5']['rss_mb'] - floor['rss_mb']) / kept_mib, None),
        ('SelfSupPretrained raw / Pretrained converted (ViTDet ViT-L/14)',
         med['init_selfsup']['wall'] / med['init_pretrained']['wall'], 1.2),
    ]


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='/tmp/mmconv-bench')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--keep', action='store_true',
                        help='keep the generated input')
    args = parser.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    start = time.time()
    med, kept, src = run(args.work_dir, args.repeats)
    rows = ratios(med, kept)
    size = os.path.getsize(src) / 2**20
    lines = table_lines(rows, med)
    lines += ['', f'Input: {size:.0f} MiB DINOv2 ViT-L/14 training '
              f'checkpoint; kept teacher backbone {kept / 2**20:.0f} MiB; '
              f'{args.repeats} interleaved rounds after a warm-up round; '
              f'torch {torch.__version__}; {os.cpu_count()} CPUs; total '
              f'{time.time() - start:.0f} s.']
    table = '\n'.join(lines)
    print(table)
    write_results('dinov2_latest', table, {
        'medians': med, 'input_mib': size, 'kept_bytes': kept,
        'ratios': [dict(name=n, value=v, limit=lim) for n, v, lim in rows]})
    if not args.keep:
        for name in (src, src + '.kept_bytes',
                     os.path.join(args.work_dir,
                                  'dinov2_vitl14_converted.pth'),
                     os.path.join(args.work_dir, 'out.pth')):
            if os.path.exists(name):
                os.remove(name)
    return 0


if __name__ == '__main__':
    sys.exit(main())
