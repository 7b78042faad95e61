# Copyright (c) mmconv contributors. All rights reserved.
"""``PretrainedLoadCheckHook``: show (and guard) what pretrained weights
actually arrived before training starts.

.. code-block:: python

    custom_hooks = [dict(type='PretrainedLoadCheckHook')]
"""
from typing import Dict, List, Tuple

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import nn

from .init import RECORD_ATTR, fingerprint, load_checkpoint_any

__all__ = ['PretrainedLoadCheckHook']

PRETRAINED_TYPES = ('Pretrained', 'SelfSupPretrained')


def _pretrained_cfgs(module: nn.Module) -> List[Tuple[str, dict]]:
    """``(submodule name, init_cfg)`` of pretrained initializers inside."""
    found = []
    for name, m in module.named_modules():
        cfgs = getattr(m, 'init_cfg', None) or []
        for cfg in [cfgs] if isinstance(cfgs, dict) else cfgs:
            kind = cfg.get('type') if isinstance(cfg, dict) else None
            kind = getattr(kind, '__name__', kind)
            if kind in PRETRAINED_TYPES or kind in ('PretrainedInit',
                                                    'SelfSupPretrainedInit'):
                found.append((name, cfg))
    return found


def _checkpoint_prints(cfg: dict) -> Dict[str, str]:
    """Digests of the tensors a plain ``Pretrained`` cfg would load."""
    from .containers import unwrap
    try:
        sd = unwrap(load_checkpoint_any(str(cfg['checkpoint']))).state_dict
    except Exception as err:  # reported in the table, not fatal here
        print_log(f'PretrainedLoadCheckHook: cannot read '
                  f'{cfg["checkpoint"]}: {err}', logger='current', level=30)
        return {}
    prefix = cfg.get('prefix') or ''
    return {k[len(prefix):]: fingerprint(v) for k, v in sd.items()
            if k.startswith(prefix)}


class PretrainedLoadCheckHook(Hook):
    """Log, per top-level module, how many tensors came from a checkpoint.

    ``before_run`` (before MMEngine initialises weights) records a digest of
    every parameter's bytes; ``before_train`` (after weights are
    initialised and ``load_from``/resume applied) compares, and logs a table:
    module, parameters, parameters changed from their random initialisation,
    parameters bit-identical to the tensors of the ``Pretrained`` /
    ``SelfSupPretrained`` checkpoint configured for them, and the files.

    Args:
        fail_on_unchanged (bool): Raise when a module configured with a
            ``Pretrained``/``SelfSupPretrained`` initializer still holds its
            random initialisation or holds no tensor of its checkpoint.
            Defaults to True.
    """

    priority = 'VERY_LOW'

    def __init__(self, fail_on_unchanged: bool = True) -> None:
        self.fail_on_unchanged = fail_on_unchanged
        self._before: Dict[str, str] = {}
        self.rows: List[Dict[str, object]] = []

    @staticmethod
    def _model(runner) -> nn.Module:
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def before_run(self, runner) -> None:
        """Fingerprint the randomly initialised parameters."""
        self._before = {n: fingerprint(p) for n, p in
                        self._model(runner).named_parameters()}

    def before_train(self, runner) -> None:
        """Compare, log the table and fail on unchanged pretrained modules."""
        model = self._model(runner)
        self.rows, problems = [], []
        for top, child in model.named_children():
            params = dict(child.named_parameters(prefix=top))
            changed = [n for n, p in params.items()
                       if n in self._before and fingerprint(p) !=
                       self._before[n]]
            pretrained = _pretrained_cfgs(child)
            from_ckpt = None
            for sub, cfg in pretrained:
                owner = child.get_submodule(sub) if sub else child
                full = f'{top}.{sub}' if sub else top
                loaded = self._from_checkpoint(owner, cfg)
                from_ckpt = (from_ckpt or 0) + loaded
                names = {n for n, _ in owner.named_parameters(prefix=full)}
                if names and (not loaded or not names & set(changed)):
                    problems.append(f'{full} (init from {cfg["checkpoint"]})')
            self.rows.append(dict(
                module=top, params=len(params), changed=len(changed),
                from_ckpt=from_ckpt,
                files=sorted({str(c['checkpoint']) for _, c in pretrained})))
        print_log(self.format_table(), logger='current')
        if problems and self.fail_on_unchanged:
            raise RuntimeError(
                'PretrainedLoadCheckHook: still at their random '
                f'initialisation although configured to load a checkpoint: '
                f'{"; ".join(problems)}. Check the checkpoint path and format '
                "(use init_cfg=dict(type='SelfSupPretrained', ...) for raw "
                'self-supervised files) or set fail_on_unchanged=False')

    @staticmethod
    def _from_checkpoint(owner: nn.Module, cfg: dict) -> int:
        """Parameters of ``owner`` bit-identical to its checkpoint's."""
        record = getattr(owner, RECORD_ATTR, None)
        prints = record['fingerprints'] if record else \
            _checkpoint_prints(cfg)
        return sum(1 for n, p in owner.named_parameters()
                   if prints.get(n) == fingerprint(p))

    def format_table(self) -> str:
        """The table logged by :meth:`before_train`."""
        head = ('module', 'params', 'changed', 'from ckpt', 'checkpoint')
        body = [(str(r['module']), str(r['params']), str(r['changed']),
                 '-' if r['from_ckpt'] is None else str(r['from_ckpt']),
                 ', '.join(r['files']) or '-') for r in self.rows]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        lines = ['Pretrained weights per module (parameters; "changed" = '
                 'differs from its random initialisation):']
        for row in [head] + body:
            lines.append('  '.join(c.ljust(w) for c, w in zip(row, widths)))
        return '\n'.join(lines)
