# Copyright (c) mmconv contributors. All rights reserved.
"""Where a model's weights came from: the per-module table (fingerprints of
the random initialisation against the initialised weights and the file that
should have provided them) shared by ``PretrainedLoadCheckHook`` and
``mmconv check`` (README "Checking a config before training").
"""
import hashlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .errors import MMConvError

__all__ = ['RECORD_ATTR', 'PRETRAINED_TYPES', 'fingerprint',
           'record_fingerprints', 'fingerprints_recorded',
           'fingerprints', 'pretrained_configs', 'Provenance',
           'compare', 'format_table']

#: Attribute ``SelfSupPretrained`` sets on a module it initialised: which
#: file, format, and the fingerprints of the tensors it loaded.
RECORD_ATTR = '_mmconv_pretrained'
#: Initializer types (config names and classes) that load a checkpoint.
PRETRAINED_TYPES = ('Pretrained', 'SelfSupPretrained', 'PretrainedInit',
                    'SelfSupPretrainedInit')


#: Whether ``SelfSupPretrained`` records the fingerprints of what it loads.
#: Hashing reads every loaded byte (about 1 GB/s), and only the load-check
#: table reads them, so :class:`~mmconv.hooks.PretrainedLoadCheckHook`
#: (``before_run``, which MMEngine calls before initialising the weights)
#: and ``mmconv check`` switch it on; without them nothing is hashed, and a
#: table built anyway hashes the file instead.
_RECORD_FINGERPRINTS = [False]


def record_fingerprints(on: bool = True) -> None:
    """Make ``SelfSupPretrained`` record fingerprints from now on."""
    _RECORD_FINGERPRINTS[0] = on


def fingerprints_recorded() -> bool:
    """Whether :func:`record_fingerprints` is on."""
    return _RECORD_FINGERPRINTS[0]


def fingerprint(tensor: torch.Tensor) -> str:
    """Digest of a tensor's dtype, shape and exact bytes (blake2b)."""
    t = tensor.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f'{t.dtype}{tuple(t.shape)}'.encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return digest.hexdigest()


def fingerprints(model: nn.Module) -> Dict[str, str]:
    """``{parameter name: fingerprint}`` of every parameter."""
    return {n: fingerprint(p) for n, p in model.named_parameters()}


def pretrained_configs(module: nn.Module) -> List[Tuple[str, dict]]:
    """``(submodule name, init_cfg)`` of pretrained initializers inside."""
    found = []
    for name, m in module.named_modules():
        cfgs = getattr(m, 'init_cfg', None) or []
        for cfg in [cfgs] if isinstance(cfgs, dict) else cfgs:
            kind = cfg.get('type') if isinstance(cfg, dict) else None
            kind = getattr(kind, '__name__', kind)
            if kind in PRETRAINED_TYPES:
                found.append((name, cfg))
    return found


def _file_prints(path: str, prefix: str = '',
                 warn=None) -> Dict[str, str]:
    """Fingerprints of a checkpoint file's tensors (read safely), keyed as
    the module under ``prefix`` names them."""
    from .pipeline import load_unwrapped
    try:
        sd = load_unwrapped(str(path)).state_dict
    except MMConvError as err:  # reported in the table, not fatal here
        if warn:
            warn(f'cannot read {path}: {err}')
        return {}
    return {k[len(prefix):]: fingerprint(v) for k, v in sd.items()
            if k.startswith(prefix)}


@dataclass
class Provenance:
    """The table: one row per top-level module, and what is wrong.

    Attributes:
        rows (list[dict]): ``module, params, changed, from_ckpt, files``.
        problems (list[str]): Modules configured to load a checkpoint that
            still hold their random initialisation (or none of its tensors).
        loaded_file (str, optional): The ``load_from``/resumed file.
    """

    rows: List[Dict[str, object]] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    loaded_file: Optional[str] = None


def compare(model: nn.Module, before: Dict[str, str],
            loaded_file: Optional[str] = None, warn=None) -> Provenance:
    """Build the table for ``model`` against its fingerprints ``before``
    weight initialisation.

    Args:
        model (nn.Module): The (unwrapped) model after initialisation and
            after ``loaded_file`` was applied.
        before (dict): :func:`fingerprints` at random initialisation.
        loaded_file (str, optional): A ``load_from``/resumed file applied
            after initialisation: parameters are compared with it, and a
            module whose parameters came from it is not a problem.
        warn (callable, optional): Receives unreadable-file messages.

    Returns:
        Provenance: Rows and problems.
    """
    result = Provenance(loaded_file=loaded_file)
    loaded = _file_prints(loaded_file, warn=warn) if loaded_file else {}
    for top, child in model.named_children():
        params = dict(child.named_parameters(prefix=top))
        changed = [n for n, p in params.items()
                   if n in before and fingerprint(p) != before[n]]
        pretrained = pretrained_configs(child)
        files = sorted({str(c['checkpoint']) for _, c in pretrained})
        if loaded_file:
            from_ckpt = sum(1 for n, p in params.items()
                            if loaded.get(n) == fingerprint(p))
            files = [str(loaded_file)] + files
            if pretrained and params and not from_ckpt:
                result.problems.append(f'{top} (loaded from {loaded_file})')
        else:
            from_ckpt = None
            for sub, cfg in pretrained:
                owner = child.get_submodule(sub) if sub else child
                full = f'{top}.{sub}' if sub else top
                n = _from_checkpoint(owner, cfg, warn)
                from_ckpt = (from_ckpt or 0) + n
                names = {k for k, _ in owner.named_parameters(prefix=full)}
                if names and (not n or not names & set(changed)):
                    result.problems.append(
                        f'{full} (init from {cfg["checkpoint"]})')
        result.rows.append(dict(module=top, params=len(params),
                                changed=len(changed), from_ckpt=from_ckpt,
                                files=files))
    return result


def _from_checkpoint(owner: nn.Module, cfg: dict, warn=None) -> int:
    """Parameters of ``owner`` bit-identical to its checkpoint's."""
    record = getattr(owner, RECORD_ATTR, None)
    prints = record.get('fingerprints') if record else None
    if prints is None:  # not recorded: hash the file
        prints = _file_prints(cfg['checkpoint'], cfg.get('prefix') or '',
                              warn)
    return sum(1 for n, p in owner.named_parameters()
               if prints.get(n) == fingerprint(p))


def format_table(provenance: Provenance) -> str:
    """The table as text."""
    head = ('module', 'params', 'changed', 'from ckpt', 'checkpoint')
    body = [(str(r['module']), str(r['params']), str(r['changed']),
             '-' if r['from_ckpt'] is None else str(r['from_ckpt']),
             ', '.join(r['files']) or '-') for r in provenance.rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ['Pretrained weights per module (parameters; "changed" = '
             'differs from its random initialisation' +
             (f'; "from ckpt" = equal to {provenance.loaded_file}, applied '
              'after initialisation' if provenance.loaded_file else '') +
             '):']
    for row in [head] + body:
        lines.append('  '.join(c.ljust(w) for c, w in zip(row, widths)))
    return '\n'.join(lines)
