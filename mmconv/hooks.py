# Copyright (c) mmconv contributors. All rights reserved.
"""``PretrainedLoadCheckHook``: show (and guard) what pretrained weights
actually arrived before training starts.

.. code-block:: python

    custom_hooks = [dict(type='PretrainedLoadCheckHook')]
"""
from typing import Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import nn

from .provenance import (Provenance, compare, fingerprints, format_table,
                         record_fingerprints)

__all__ = ['PretrainedLoadCheckHook']


def _warn(message: str) -> None:
    print_log(f'PretrainedLoadCheckHook: {message}', logger='current',
              level=30)


def loaded_file(runner) -> Optional[str]:
    """The file MMEngine applied after weight initialisation: ``load_from``,
    or with ``resume=True`` the resumed checkpoint (the given one or the
    latest in ``work_dir``); None for a run from the initialisers."""
    if getattr(runner, '_resume', False):
        if getattr(runner, '_load_from', None):
            return str(runner._load_from)
        from mmengine.runner import find_latest_checkpoint
        return find_latest_checkpoint(runner.work_dir)
    found = getattr(runner, '_load_from', None)
    return str(found) if found else None


class PretrainedLoadCheckHook(Hook):
    """Log, per top-level module, how many tensors came from a checkpoint.

    ``before_run`` (before MMEngine initialises weights) records a digest of
    every parameter's bytes; ``before_train`` (after weights are
    initialised and ``load_from``/resume applied) compares, and logs a table
    (:mod:`mmconv.provenance`): module, parameters, parameters changed from
    their random initialisation, parameters bit-identical to the checkpoint
    that provided them, and the files. With ``load_from`` or ``resume`` that
    checkpoint is the loaded/resumed file (its weights replace the
    pre-training file's), so a correct resumed run never fails, however far
    training has moved the weights.

    Args:
        fail_on_unchanged (bool): Raise when a module configured with a
            ``Pretrained``/``SelfSupPretrained`` initializer still holds its
            random initialisation or holds no tensor of its checkpoint.
            Defaults to True.
    """

    priority = 'VERY_LOW'

    def __init__(self, fail_on_unchanged: bool = True) -> None:
        self.fail_on_unchanged = fail_on_unchanged
        self._before = {}
        self.provenance = Provenance()

    @property
    def rows(self):
        """The table's rows (see :class:`mmconv.provenance.Provenance`)."""
        return self.provenance.rows

    @staticmethod
    def _model(runner) -> nn.Module:
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def before_run(self, runner) -> None:
        """Fingerprint the randomly initialised parameters (and have
        ``SelfSupPretrained`` record what it loads)."""
        record_fingerprints()
        self._before = fingerprints(self._model(runner))

    def before_train(self, runner) -> None:
        """Compare, log the table and fail on unchanged pretrained modules."""
        self.provenance = compare(self._model(runner), self._before,
                                  loaded_file(runner), warn=_warn)
        print_log(format_table(self.provenance), logger='current')
        problems = self.provenance.problems
        if problems and self.fail_on_unchanged:
            raise RuntimeError(
                'PretrainedLoadCheckHook: still at their random '
                f'initialisation although configured to load a checkpoint: '
                f'{"; ".join(problems)}. Check the checkpoint path and format '
                "(use init_cfg=dict(type='SelfSupPretrained', ...) for raw "
                'self-supervised files) or set fail_on_unchanged=False')

    def format_table(self) -> str:
        """The table logged by :meth:`before_train`."""
        return format_table(self.provenance)
