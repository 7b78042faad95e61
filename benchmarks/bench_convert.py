# Copyright (c) mmconv contributors. All rights reserved.
"""Speed and memory of mmconv against MMDetection's own converter approach.

Builds its inputs in ``--work-dir`` (default ``/tmp/mmconv-bench``):

* ``moco_v2_370mb.pth.tar``: a MoCo v2-layout ResNet-50 training checkpoint
  (query and key encoders with the MLP head, queue 128x65536, SGD momentum
  state), about 370 MB;
* ``big_4gb.pth``: a synthetic >= 4 GB checkpoint of a large backbone with
  the same kind of prefixes (``module.encoder_q.*`` kept, ``encoder_k`` and
  optimizer state dropped).

Then, interleaving the candidates over ``--repeats`` rounds (warm page cache;
one warm-up round first), measures wall time and peak RSS of each command in
a fresh process. Before each command, untimed, the destination is deleted
and ``sync`` writes back dirty pages, so every command writes a new file and
none pays for another one's deferred writes or for freeing the previous
output (on this ext4 mount with ``discard``, replacing an existing 1 GB file
costs about 1.5 s, whichever tool does it). The commands:

* ``floor``: ``python -c "import torch"`` (start-up floor);
* ``mmconv``: ``tools/model_converters/selfsup2mmdet.py SRC DST --force``;
* ``mmdet``: MMDetection's ``selfsup2mmdet.py`` approach (full
  ``torch.load(weights_only=False)``, as on the torch < 2.6 it was written
  for, + dict filter printing each key + ``torch.save``): the baseline of
  the targets;
* ``mmdetlit``: the same with MMDetection's literal ``torch.load(src)``,
  which torch >= 2.6 (here 2.14) runs weights-only (reference);
* ``mmap5``: a 5-line ``torch.load(mmap=True)`` filter (reference);
* ``help``: ``selfsup2mmdet.py --help``;
* ``init_selfsup`` / ``init_pretrained``: an MMDetection ResNet-50 initialised
  by ``SelfSupPretrained`` on the raw file vs MMEngine's ``Pretrained`` on
  the pre-converted file.

Prints medians and ratios (conversion work = wall minus floor; memory above
the floor) and writes ``benchmarks/results/latest.{json,md}``.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
CLI = os.path.join(ROOT, 'tools', 'model_converters', 'selfsup2mmdet.py')

MEASURE = textwrap.dedent('''
    import json, resource, subprocess, sys, time
    t = time.perf_counter()
    rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({'rc': rc, 'wall': wall, 'rss_mb': rss}))
''')

MMDET_APPROACH = textwrap.dedent('''
    import sys, torch
    from collections import OrderedDict
    ckpt = torch.load(sys.argv[1]{LOAD_ARGS})
    new = OrderedDict()
    for k, v in ckpt['state_dict'].items():
        if k.startswith('module.encoder_q.'):
            new[k.replace('module.encoder_q.', '')] = v
            print(k, '->', k.replace('module.encoder_q.', ''))
    torch.save({'state_dict': new}, sys.argv[2])
''')

MMDET_LITERAL = MMDET_APPROACH.replace('{LOAD_ARGS}', '')
MMDET_APPROACH = MMDET_APPROACH.replace('{LOAD_ARGS}', ', weights_only=False')

MMAP5 = textwrap.dedent('''
    import sys, torch
    sd = torch.load(sys.argv[1], mmap=True, weights_only=True)['state_dict']
    p = 'module.encoder_q.'
    out = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    torch.save({'state_dict': out}, sys.argv[2])
''')

INIT = textwrap.dedent('''
    import sys, mmconv
    from mmdet.models import ResNet
    kind, path = sys.argv[1], sys.argv[2]
    ResNet(depth=50, init_cfg=dict(type=kind, checkpoint=path)).init_weights()
''')


def make_moco(path: str) -> None:
    """MoCo v2 training checkpoint, ~370 MB."""
    import torchvision
    from torch import nn

    def encoder():
        m = torchvision.models.resnet50(num_classes=128)
        m.fc = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), m.fc)
        return m

    q, k = encoder(), encoder()
    sd = {f'module.encoder_q.{n}': v for n, v in q.state_dict().items()}
    sd.update({f'module.encoder_k.{n}': v for n, v in k.state_dict().items()})
    sd['module.queue'] = torch.randn(128, 65536)
    sd['module.queue_ptr'] = torch.zeros(1, dtype=torch.long)
    opt = torch.optim.SGD(q.parameters(), lr=0.03, momentum=0.9)
    for p in q.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.save({'epoch': 800, 'arch': 'resnet50', 'state_dict': sd,
                'optimizer': opt.state_dict()}, path)


def make_big(path: str, gib: float = 4.1) -> None:
    """Synthetic >= 4 GB checkpoint: 1/4 kept backbone, 3/4 dropped."""
    block = (1024, 1024, 3, 3)  # 36 MiB float32
    per = 4 * 1024 * 1024 * 9
    n = int(gib * 2**30 / per / 4) + 1
    sd, opt_state = {}, {}
    for i in range(n):
        sd[f'module.encoder_q.layer{1 + i % 4}.{i}.conv2.weight'] = \
            torch.full(block, float(i))
        sd[f'module.encoder_k.layer{1 + i % 4}.{i}.conv2.weight'] = \
            torch.full(block, -float(i))
        opt_state[2 * i] = {'momentum_buffer': torch.full(block, 0.5)}
        opt_state[2 * i + 1] = {'momentum_buffer': torch.full(block, 0.25)}
    torch.save({'epoch': 1, 'state_dict': sd,
                'optimizer': {'state': opt_state, 'param_groups': []}}, path)


def measure(cmd, dst=None):
    """Run ``cmd`` in a fresh process: wall seconds and peak RSS (MiB).

    Untimed, first: ``dst`` is deleted and dirty pages are written back
    (``sync``), so no command pays for another one's deferred writes or for
    freeing the file it would overwrite.
    """
    if dst is not None and os.path.exists(dst):
        os.remove(dst)
    os.sync()
    out = subprocess.run([PY, '-c', MEASURE] + cmd, capture_output=True,
                         text=True, check=True).stdout
    res = json.loads(out)
    if res['rc'] != 0:
        raise RuntimeError(f'{cmd} exited {res["rc"]}')
    return res


def run(work: str, repeats: int, skip_big: bool):
    """Measure every candidate, interleaved; return the medians."""
    moco = os.path.join(work, 'moco_v2_370mb.pth.tar')
    big = os.path.join(work, 'big_4gb.pth')
    if not os.path.exists(moco):
        make_moco(moco)
    inputs = {'370mb': moco}
    if not skip_big:
        if not os.path.exists(big):
            make_big(big)
        inputs['4gb'] = big
    converted = os.path.join(work, 'converted.pth')
    subprocess.run([PY, CLI, moco, converted, '--force'], check=True,
                   stdout=subprocess.DEVNULL)
    out = os.path.join(work, 'out.pth')
    cands = {'floor': [PY, '-c', 'import torch'],
             'help': [PY, CLI, '--help'],
             'init_selfsup': [PY, '-c', INIT, 'SelfSupPretrained', moco],
             'init_pretrained': [PY, '-c', INIT, 'Pretrained', converted]}
    for size, src in inputs.items():
        cands[f'mmconv_{size}'] = [PY, CLI, src, out, '--force',
                                   '--selfsup', 'moco']
        cands[f'mmdet_{size}'] = [PY, '-c', MMDET_APPROACH, src, out]
        cands[f'mmap5_{size}'] = [PY, '-c', MMAP5, src, out]
        cands[f'mmdetlit_{size}'] = [PY, '-c', MMDET_LITERAL, src, out]
    return interleaved(cands, out, repeats), inputs


def interleaved(cands, dst, repeats):
    """Run every command of ``cands`` once per round, ``repeats`` rounds
    after a warm-up round (warm page cache), each :func:`measure`-d with
    ``dst`` deleted first; return each command's medians and samples."""
    samples = {name: [] for name in cands}
    for round_ in range(repeats + 1):  # round 0 warms the page cache
        for name, cmd in cands.items():
            res = measure(cmd, dst)
            if round_:
                samples[name].append(res)
        print(f'round {round_}/{repeats} done', flush=True)
    return {name: {'wall': statistics.median(r['wall'] for r in rs),
                   'rss_mb': statistics.median(r['rss_mb'] for r in rs),
                   'n': len(rs),
                   'walls': [round(r['wall'], 3) for r in rs],
                   'rss_mbs': [round(r['rss_mb'], 1) for r in rs]}
            for name, rs in samples.items()}


def write_results(stem, table, data):
    """``benchmarks/results/{stem}.md`` (the tables) and ``.json``."""
    out_dir = os.path.join(ROOT, 'benchmarks', 'results')
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f'{stem}.md'), 'w') as f:
        f.write(table + '\n')
    with open(os.path.join(out_dir, f'{stem}.json'), 'w') as f:
        json.dump(data, f, indent=1)


def ratios(med, inputs):
    """Targets from the issue, as (name, value, limit)."""
    floor = med['floor']
    rows = []
    limits = {'370mb': (0.7, 0.5), '4gb': (0.6, 0.4)}
    for size in inputs:
        ours, theirs = med[f'mmconv_{size}'], med[f'mmdet_{size}']
        ref = med[f'mmap5_{size}']
        work = lambda m: max(m['wall'] - floor['wall'], 1e-9)  # noqa: E731
        mem = lambda m: max(m['rss_mb'] - floor['rss_mb'], 1e-9)  # noqa
        rows.append((f'{size} conversion work, mmconv / mmdet',
                     work(ours) / work(theirs), limits[size][0]))
        rows.append((f'{size} memory above floor, mmconv / mmdet',
                     mem(ours) / mem(theirs), limits[size][1]))
        rows.append((f'{size} work, 5-line mmap filter / mmdet (reference)',
                     work(ref) / work(theirs), None))
        rows.append((f'{size} memory, 5-line mmap filter / mmdet (reference)',
                     mem(ref) / mem(theirs), None))
        lit = med[f'mmdetlit_{size}']
        rows.append((f'{size} work, mmconv / mmdet literal torch.load(src) '
                     'on torch 2.14 = weights-only (reference)',
                     work(ours) / work(lit), None))
    rows.append(('selfsup2mmdet.py --help / import torch',
                 med['help']['wall'] / floor['wall'], 1.2))
    rows.append(('SelfSupPretrained raw / Pretrained converted',
                 med['init_selfsup']['wall'] / med['init_pretrained']['wall'],
                 1.2))
    return rows


def table_lines(rows, med):
    """Markdown tables: the targets (PASS/FAIL) and the per-command
    medians."""
    lines = ['| measure | ratio | target | result |', '|---|---|---|---|']
    for name, value, limit in rows:
        verdict = '' if limit is None else (
            'PASS' if value <= limit else 'FAIL')
        lines.append(f'| {name} | {value:.2f} | '
                     f'{"-" if limit is None else f"<= {limit}"} | '
                     f'{verdict} |')
    lines += ['', '| command | median wall s | wall min-max s | '
              'median peak RSS MiB |', '|---|---|---|---|']
    lines += [f'| {k} | {v["wall"]:.2f} | {min(v["walls"]):.2f}-'
              f'{max(v["walls"]):.2f} | {v["rss_mb"]:.0f} |'
              for k, v in med.items()]
    return lines


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='/tmp/mmconv-bench')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--skip-big', action='store_true',
                        help='skip the 4 GB input')
    parser.add_argument('--keep', action='store_true',
                        help='keep the generated inputs')
    args = parser.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    start = time.time()
    med, inputs = run(args.work_dir, args.repeats, args.skip_big)
    rows = ratios(med, inputs)
    sizes = {k: os.path.getsize(v) / 2**20 for k, v in inputs.items()}
    ram_gib = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    lines = table_lines(rows, med)
    lines += ['', 'Inputs: ' + ', '.join(f'{k} = {v:.0f} MiB'
                                         for k, v in sizes.items()) +
              f'; {args.repeats} interleaved rounds after a warm-up round '
              '(warm page cache: the inputs fit in RAM; before each command, '
              'untimed, the destination is deleted and sync runs); '
              f'torch {torch.__version__}; {os.cpu_count()} CPUs, '
              f'{ram_gib:.0f} GiB RAM; '
              f'total {time.time() - start:.0f} s.']
    table = '\n'.join(lines)
    print(table)
    write_results('latest', table, {
        'medians': med, 'input_mib': sizes,
        'settings': {'repeats': args.repeats, 'warm_cache': True,
                     'dst_deleted_before_each': True,
                     'torch': torch.__version__, 'cpus': os.cpu_count(),
                     'ram_gib': ram_gib, 'total_s': time.time() - start},
        'ratios': [dict(name=n, value=v, limit=lim)
                   for n, v, lim in rows]})
    if not args.keep:
        for path in list(inputs.values()) + [
                os.path.join(args.work_dir, 'converted.pth'),
                os.path.join(args.work_dir, 'out.pth')]:
            if os.path.exists(path):
                os.remove(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
