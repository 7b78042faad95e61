# Copyright (c) mmconv contributors. All rights reserved.
"""Memory and work of converting a transformers-layout DINOv3 ViT-7B.

Builds, in ``--work-dir`` (default ``/tmp/mmconv-bench``), folders in the
layout ``DINOv3ViTModel.save_pretrained`` writes for the 7B (transformers
5.25.0 names; ``config.json`` of ``facebook/dinov3-vit7b16-pretrain-
lvd1689m``'s architecture: width 4096, 32 heads, gated MLP of 8192, no
q/k/v bias, 4 registers), bf16, sharded as ``save_pretrained`` shards
(``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``),
at the real widths and two depths (``--depths``, default 2 and 8 blocks;
the 40-block model is 13.4 GB, twice this machine's spare disk with its
output). Converting it concatenates every block's separate q/k/v into one
``qkv`` (the transform of the issue), renames the rest.

Measures, interleaved over ``--repeats`` rounds after a warm-up round (warm
page cache; before each command the destination is deleted and ``sync``
runs), each command in a fresh process:

* ``floor``: ``python -c "import torch"``;
* ``mmconv_<depth>``: ``python -m mmconv convert FOLDER DST --force``
  (auto-detected ``hf_dinov3_vit_gated``, streamed, atomic write + fsync);
* ``mmap5_<depth>``: a 5-line filter: every shard through safetensors'
  ``load_file`` (memory-mapped), ``torch.save``, fsync (no q/k/v
  concatenation: less work than the conversion; the baseline);
* ``init_selfsup`` / ``init_pretrained``: mmconv's ``ViTDet`` at the 7B's
  widths and the smaller depth initialised by ``SelfSupPretrained`` on the
  folder vs MMEngine's ``Pretrained`` on the converted file.

Targets (issue 20): peak RSS above the floor at most 2x the largest output
tensor + 512 MiB at every depth (flat in depth); ``SelfSupPretrained``
within 1.2x of ``Pretrained``; the work against the 5-line filter is
reported. Writes ``benchmarks/results/dinov3_7b_latest.{json,md}``.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_convert import (PY, interleaved, table_lines,  # noqa: E402
                           write_results)

#: The 7B's widths (dinov3 ``vit_7b``: embed 4096, 32 heads, SwiGLU 8192).
DIM, HEADS, HIDDEN, PATCH, REGISTERS = 4096, 32, 8192, 16, 4
#: ``save_pretrained``'s default shard size is 5 GB; smaller here so the
#: shallow model has several shards too.
SHARD_BYTES = 1 << 30

MMAP5 = textwrap.dedent('''
    import glob, os, sys, torch
    from safetensors.torch import load_file
    sd = {}
    for p in sorted(glob.glob(sys.argv[1] + '/*.safetensors')): sd.update(load_file(p))
    torch.save({'state_dict': sd}, sys.argv[2])
    f = os.open(sys.argv[2], os.O_RDONLY); os.fsync(f); os.close(f)
''')

INIT = textwrap.dedent('''
    import sys, mmconv, mmconv.models
    kind, path, depth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mmconv.models.ViTDet(
        img_size=224, patch_size=16, embed_dim=4096, depth=depth,
        num_heads=32, mlp_ratio=2, mlp='swiglu_unpacked', qkv_bias=False,
        layer_scale=1e-5, norm_cfg=dict(type='LN', eps=1e-5),
        use_abs_pos=False, use_rope=True, with_cls_token=True,
        num_reg_tokens=4, final_norm=True, window_size=0,
        global_attn_indexes=(), use_rel_pos=False,
        init_cfg=dict(type=kind, checkpoint=path)).init_weights()
''')


def layout(depth: int) -> List[Tuple[str, Tuple[int, ...]]]:
    """``DINOv3ViTModel.save_pretrained`` names and shapes of the 7B at
    ``depth`` blocks (recorded: tests/fixtures/dinov3_layouts.py)."""
    shapes = [('embeddings.cls_token', (1, 1, DIM)),
              ('embeddings.mask_token', (1, 1, DIM)),
              ('embeddings.register_tokens', (1, REGISTERS, DIM)),
              ('embeddings.patch_embeddings.weight', (DIM, 3, PATCH, PATCH)),
              ('embeddings.patch_embeddings.bias', (DIM, ))]
    for i in range(depth):
        b = f'layer.{i}.'
        shapes += [(b + 'norm1.weight', (DIM, )), (b + 'norm1.bias', (DIM, )),
                   (b + 'attention.q_proj.weight', (DIM, DIM)),
                   (b + 'attention.k_proj.weight', (DIM, DIM)),
                   (b + 'attention.v_proj.weight', (DIM, DIM)),
                   (b + 'attention.o_proj.weight', (DIM, DIM)),
                   (b + 'attention.o_proj.bias', (DIM, )),
                   (b + 'layer_scale1.lambda1', (DIM, )),
                   (b + 'norm2.weight', (DIM, )), (b + 'norm2.bias', (DIM, )),
                   (b + 'mlp.gate_proj.weight', (HIDDEN, DIM)),
                   (b + 'mlp.gate_proj.bias', (HIDDEN, )),
                   (b + 'mlp.up_proj.weight', (HIDDEN, DIM)),
                   (b + 'mlp.up_proj.bias', (HIDDEN, )),
                   (b + 'mlp.down_proj.weight', (DIM, HIDDEN)),
                   (b + 'mlp.down_proj.bias', (DIM, )),
                   (b + 'layer_scale2.lambda1', (DIM, ))]
    return shapes + [('norm.weight', (DIM, )), ('norm.bias', (DIM, ))]


def config(depth: int) -> Dict:
    """``config.json`` as transformers 5.25.0 writes it for the 7B."""
    return {'architectures': ['DINOv3ViTModel'], 'model_type': 'dinov3_vit',
            'hidden_size': DIM, 'num_hidden_layers': depth,
            'num_attention_heads': HEADS, 'intermediate_size': HIDDEN,
            'use_gated_mlp': True, 'hidden_act': 'silu',
            'query_bias': False, 'key_bias': False, 'value_bias': False,
            'proj_bias': True, 'mlp_bias': True, 'layerscale_value': 1.0,
            'layer_norm_eps': 1e-5, 'num_register_tokens': REGISTERS,
            'patch_size': PATCH, 'image_size': 224, 'num_channels': 3,
            'rope_theta': 100.0, 'dtype': 'bfloat16',
            'transformers_version': '5.25.0'}


def make_folder(folder: str, depth: int) -> int:
    """Write the sharded bf16 folder (tensor by tensor: the builder's own
    memory stays at one shard); return its tensor bytes."""
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    gen = torch.Generator().manual_seed(depth)
    shards: List[Dict[str, torch.Tensor]] = [{}]
    size, total = 0, 0
    for name, shape in layout(depth):
        tensor = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        nbytes = tensor.numel() * 2
        if size and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
        total += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
        save_file(shard, os.path.join(folder, file), metadata={'format': 'pt'})
        weight_map.update({k: file for k in shard})
        shard.clear()
    with open(os.path.join(folder, 'model.safetensors.index.json'), 'w') as f:
        json.dump({'metadata': {'total_size': total},
                   'weight_map': weight_map}, f, indent=2)
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump(config(depth), f, indent=2)
    return total


def largest_tensor(path: str) -> int:
    """Bytes of the largest tensor of a converted file (memory-mapped)."""
    sd = torch.load(path, mmap=True, weights_only=True)['state_dict']
    return max(v.numel() * v.element_size() for v in sd.values())


def run(work: str, depths: Tuple[int, ...], repeats: int
        ) -> Tuple[dict, Dict[int, int], Dict[int, int]]:
    """Measure every candidate, interleaved; return the medians, the input
    bytes and the largest output tensor per depth."""
    mmconv = [PY, '-m', 'mmconv', 'convert']
    out = os.path.join(work, 'out.pth')
    cands = {'floor': [PY, '-c', 'import torch']}
    inputs, largest = {}, {}
    for depth in depths:
        folder = os.path.join(work, f'dinov3_vit7b16_hf_depth{depth}')
        stamp = os.path.join(folder, '.bytes')
        if not os.path.exists(stamp):
            shutil.rmtree(folder, ignore_errors=True)
            with open(os.path.join(work, '.tmp-bytes'), 'w') as f:
                f.write(str(make_folder(folder, depth)))
            os.replace(os.path.join(work, '.tmp-bytes'), stamp)
        inputs[depth] = int(open(stamp).read())
        cands[f'mmconv_{depth}'] = mmconv + [folder, out, '--force']
        cands[f'mmap5_{depth}'] = [PY, '-c', MMAP5, folder, out]
    small = min(depths)
    folder = os.path.join(work, f'dinov3_vit7b16_hf_depth{small}')
    converted = os.path.join(work, 'dinov3_vit7b16_converted.pth')
    for depth in depths:
        subprocess.run(mmconv + [os.path.join(
            work, f'dinov3_vit7b16_hf_depth{depth}'), converted, '--force'],
            check=True, stdout=subprocess.DEVNULL)
        largest[depth] = largest_tensor(converted)
    cands['init_selfsup'] = [PY, '-c', INIT, 'SelfSupPretrained', folder,
                             str(small)]
    cands['init_pretrained'] = [PY, '-c', INIT, 'Pretrained', converted,
                                str(small)]
    return interleaved(cands, out, repeats), inputs, largest


def ratios(med: dict, inputs: Dict[int, int], largest: Dict[int, int]
           ) -> List[Tuple[str, float, float]]:
    """The targets, as (name, value, limit)."""
    floor = med['floor']
    work = lambda m: max(m['wall'] - floor['wall'], 1e-9)  # noqa: E731
    rows = []
    for depth in sorted(inputs):
        bound = 2 * largest[depth] / 2**20 + 512
        peak = med[f'mmconv_{depth}']['rss_mb'] - floor['rss_mb']
        rows.append((f'{depth} blocks ({inputs[depth] / 2**30:.1f} GiB): '
                     'peak memory above floor / (2 x largest output tensor '
                     '+ 512 MiB)', peak / bound, 1.0))
        rows.append((f'{depth} blocks: conversion work, mmconv / 5-line mmap '
                     'filter + fsync (reference)',
                     work(med[f'mmconv_{depth}']) /
                     work(med[f'mmap5_{depth}']), None))
        rows.append((f'{depth} blocks: memory above floor, 5-line mmap '
                     'filter / input bytes (reference)',
                     (med[f'mmap5_{depth}']['rss_mb'] - floor['rss_mb'])
                     / (inputs[depth] / 2**20), None))
    low, high = min(inputs), max(inputs)
    rows.append((f'peak memory above floor, {high} / {low} blocks '
                 f'(input x{inputs[high] / inputs[low]:.1f})',
                 (med[f'mmconv_{high}']['rss_mb'] - floor['rss_mb']) /
                 (med[f'mmconv_{low}']['rss_mb'] - floor['rss_mb']), None))
    rows.append((f'SelfSupPretrained raw / Pretrained converted (ViTDet, 7B '
                 f'widths, {low} blocks)',
                 med['init_selfsup']['wall'] / med['init_pretrained']['wall'],
                 1.2))
    return rows


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='/tmp/mmconv-bench')
    parser.add_argument('--depths', type=int, nargs=2, default=(2, 8))
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--keep', action='store_true',
                        help='keep the generated inputs')
    args = parser.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    start = time.time()
    med, inputs, largest = run(args.work_dir, tuple(args.depths),
                               args.repeats)
    rows = ratios(med, inputs, largest)
    lines = table_lines(rows, med)
    lines += ['', 'Inputs: transformers-layout DINOv3 ViT-7B/16, bf16, '
              'sharded, ' + ', '.join(
                  f'{d} blocks = {b / 2**20:.0f} MiB (largest output '
                  f'tensor {largest[d] / 2**20:.0f} MiB)'
                  for d, b in sorted(inputs.items())) +
              f'; {args.repeats} interleaved rounds after a warm-up round; '
              f'torch {torch.__version__}; {os.cpu_count()} CPUs; total '
              f'{time.time() - start:.0f} s.']
    table = '\n'.join(lines)
    print(table)
    write_results('dinov3_7b_latest', table, {
        'medians': med, 'input_bytes': inputs, 'largest_output': largest,
        'ratios': [dict(name=n, value=v, limit=lim) for n, v, lim in rows]})
    if not args.keep:
        for depth in inputs:
            shutil.rmtree(os.path.join(
                args.work_dir, f'dinov3_vit7b16_hf_depth{depth}'),
                ignore_errors=True)
        for name in ('dinov3_vit7b16_converted.pth', 'out.pth'):
            path = os.path.join(args.work_dir, name)
            if os.path.exists(path):
                os.remove(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
