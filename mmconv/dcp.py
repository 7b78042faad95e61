# Copyright (c) mmconv contributors. All rights reserved.
"""Reading ``torch.distributed.checkpoint`` directories (DCP) safely.

A DCP directory (``.metadata`` plus ``__<rank>_<n>.distcp`` files) is what
``torch.distributed.checkpoint.save`` writes, e.g. DINOv3's training
checkpoints (``dinov3/checkpointer/checkpointer.py``: ``{'iteration',
'model': get_model_state_dict(SSLMetaArch), 'optimizer'}``) and its sharded
eval checkpoint (``model_ema`` saved alone as ``model``). The tensors are
read by torch's own reader (``FileSystemReader`` + ``dcp.load`` into
tensors allocated from the metadata), only those of the one network that
is converted, never the optimizer state.

What would run code from the directory is kept out:

* ``.metadata`` is a pickle that torch's reader opens with plain
  ``pickle.load``: here it is read by :class:`MetadataUnpickler`, which
  admits only the metadata classes of ``torch.distributed.checkpoint``
  (``Metadata``, ``TensorStorageMetadata``, ``_StorageInfo`` ...), torch
  dtypes, ``torch.Size``, layouts, memory formats and paths; anything else
  is refused (exit 4). Its storage records must name plain files of the
  directory and lie inside them;
* tensor records are read by torch with ``torch.load(weights_only=True)``,
  a safety boundary from torch 2.6 on; before 2.6 a DCP directory is
  refused (exit 4) unless ``unsafe=True``;
* non-tensor records (``iteration``, optimizer ``param_groups``) are
  pickles torch loads with ``weights_only=False``: they are never
  requested, and the planner refuses to load any.

:func:`load_dcp` returns a :class:`DCPCheckpoint`, a mapping whose entries
are read on first use, shaped as :func:`mmconv.containers.unwrap` expects:
for a training checkpoint ``teacher`` (the EMA backbone, ``model_ema``,
which is what DINOv3's own eval checkpoint calls ``teacher``), ``student``
and ``model_ema``, each ``{'backbone.<name>': tensor}`` as in
``teacher_checkpoint.pth``; the default is ``teacher``, ``select='student'``
takes the student and ``select='ema'`` ``model_ema``. Any other DCP
checkpoint gives its ``model`` entry (or, without one, all its tensors as
``state_dict``).
"""
import io
import os
import pathlib
import pickle
import re
import warnings
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional,
                    Tuple)

import torch

from .errors import InputError, UnsafeCheckpointError
from .reading import TORCH_WEIGHTS_ONLY_IS_SAFE

__all__ = ['is_dcp_directory', 'load_dcp', 'read_metadata',
           'DCPCheckpoint', 'NotRead', 'MetadataUnpickler', 'METADATA_FILE',
           'NETWORKS']

#: The metadata file of a DCP directory.
METADATA_FILE = '.metadata'
#: Largest ``.metadata`` read (a 7B training checkpoint's is a few MB).
MAX_METADATA_BYTES = 256 << 20
#: The networks of DINOv3's ``SSLMetaArch``, as ``model.<net>.backbone.*``.
NETWORKS = ('student', 'teacher', 'model_ema')

_DCP = 'torch.distributed.checkpoint'
#: Globals a DCP ``.metadata`` pickle may name (torch 2.1 - 2.14).
_METADATA_GLOBALS = frozenset([
    (f'{_DCP}.metadata', 'Metadata'),
    (f'{_DCP}.metadata', 'TensorStorageMetadata'),
    (f'{_DCP}.metadata', 'BytesStorageMetadata'),
    (f'{_DCP}.metadata', 'ChunkStorageMetadata'),
    (f'{_DCP}.metadata', 'TensorProperties'),
    (f'{_DCP}.metadata', 'MetadataIndex'),
    (f'{_DCP}.metadata', 'StorageMeta'),
    (f'{_DCP}.metadata', '_MEM_FORMAT_ENCODING'),
    (f'{_DCP}.filesystem', '_StorageInfo'),
    ('torch', 'Size'),
    ('torch.serialization', '_get_layout'),
    ('pathlib', 'PosixPath'),
    ('pathlib', 'PurePosixPath'),
    ('pathlib', 'WindowsPath'),
    ('pathlib', 'PureWindowsPath'),
    ('collections', 'OrderedDict'),
])


class MetadataUnpickler(pickle.Unpickler):
    """Unpickler of a DCP ``.metadata``: only the metadata classes, torch
    dtypes/Size/layouts and paths (what ``torch.distributed.checkpoint``
    writes there); no persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` only if a DCP metadata pickle needs it."""
        if module == 'torch' and isinstance(getattr(torch, name, None),
                                            torch.dtype):
            return getattr(torch, name)
        if (module, name) in _METADATA_GLOBALS:
            if module == f'{_DCP}.metadata':
                from torch.distributed.checkpoint import metadata
                return getattr(metadata, name)
            if module == f'{_DCP}.filesystem':
                from torch.distributed.checkpoint import filesystem
                return getattr(filesystem, name)
            if module == 'pathlib':
                return getattr(pathlib, name)
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f'Unsupported global: GLOBAL {module}.{name}')

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError('persistent ids are not admitted in a '
                                     'DCP .metadata')


def is_dcp_directory(path: str) -> bool:
    """Whether ``path`` is a directory holding a DCP ``.metadata``."""
    return os.path.isdir(path) and os.path.isfile(
        os.path.join(path, METADATA_FILE))


def _corrupt(path: str, detail: str) -> InputError:
    return InputError(f'{path}: not a readable torch.distributed.checkpoint '
                      f'directory ({detail[:160]}); copy the whole checkpoint '
                      'directory again')


def read_metadata(path: str) -> Any:
    """The ``Metadata`` of the DCP directory ``path``, unpickled with
    :class:`MetadataUnpickler` and checked: every storage record names a
    plain file of the directory and lies inside it.

    Raises:
        InputError: Missing, oversized, corrupt or inconsistent metadata.
        UnsafeCheckpointError: The pickle names a global not admitted.
    """
    from torch.distributed.checkpoint.metadata import (Metadata,
                                                       TensorStorageMetadata)
    meta_path = os.path.join(path, METADATA_FILE)
    try:
        size = os.path.getsize(meta_path)
        if size > MAX_METADATA_BYTES:
            raise _corrupt(path, f'.metadata is {size} bytes, more than the '
                           f'{MAX_METADATA_BYTES} a checkpoint needs')
        with open(meta_path, 'rb') as f:
            data = f.read()
        metadata = MetadataUnpickler(io.BytesIO(data)).load()
    except InputError:
        raise
    except pickle.UnpicklingError as err:
        if str(err).startswith('Unsupported global'):
            raise UnsafeCheckpointError(
                f'{path}: refused to load: its .metadata needs '
                f'{str(err).split()[-1]}, which a torch.distributed.'
                'checkpoint does not hold and could run code') from None
        raise _corrupt(path, f'.metadata: {err}') from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, ImportError, RecursionError,
            MemoryError) as err:
        raise _corrupt(path, f'.metadata: {type(err).__name__}: {err}'
                       ) from None
    if not isinstance(metadata, Metadata) or not isinstance(
            metadata.state_dict_metadata, dict) or not isinstance(
            metadata.storage_data, dict):
        raise _corrupt(path, '.metadata does not hold a DCP Metadata')
    for fqn, item in metadata.state_dict_metadata.items():
        if not isinstance(fqn, str):
            raise _corrupt(path, f'.metadata: a key is a {type(fqn)}')
        if isinstance(item, TensorStorageMetadata) and not (
                isinstance(item.properties.dtype, torch.dtype)
                and all(isinstance(n, int) and n >= 0 for n in item.size)):
            raise _corrupt(path, f'.metadata: {fqn} has no valid dtype/size')
    sizes: Dict[str, int] = {}
    for index, info in metadata.storage_data.items():
        name = getattr(info, 'relative_path', None)
        offset, length = getattr(info, 'offset', None), getattr(
            info, 'length', None)
        if not isinstance(name, str) or not name or name != \
                os.path.basename(name) or name in ('.', '..') or \
                name == METADATA_FILE:
            raise _corrupt(path, f'a storage record names {name!r}, not a '
                           'file of the directory')
        if name not in sizes:
            file = os.path.join(path, name)
            if not os.path.isfile(file):
                raise _corrupt(path, f'{name} is missing')
            sizes[name] = os.path.getsize(file)
        if not (isinstance(offset, int) and isinstance(length, int)
                and offset >= 0 and length >= 0
                and offset + length <= sizes[name]):
            raise _corrupt(path, f'{name} is truncated: a record of '
                           f'{getattr(index, "fqn", index)} lies beyond its '
                           f'{sizes[name]} bytes')
    return metadata


def _tensor_keys(metadata: Any) -> Dict[str, Any]:
    """FQN -> ``TensorStorageMetadata`` of every tensor record."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    return {k: v for k, v in metadata.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}


def _read_tensors(path: str, metadata: Any, fqns: List[str]
                  ) -> Dict[str, torch.Tensor]:
    """The tensors ``fqns`` of the directory, read by torch's DCP reader
    into tensors allocated from the metadata."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import \
        DefaultLoadPlanner

    class Reader(dcp.FileSystemReader):
        """torch's reader, with the metadata read here."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            return metadata

    class Planner(DefaultLoadPlanner):
        """torch's planner; never loads a (pickled) non-tensor record."""

        def load_bytes(self, read_item: Any, value: Any) -> None:
            raise UnsafeCheckpointError(
                f'{path}: refused to load the non-tensor record '
                f'{read_item.dest_index.fqn} (a pickle)')

    tensors = _tensor_keys(metadata)
    stored: Dict[str, int] = {}
    for index, info in metadata.storage_data.items():
        fqn = getattr(index, 'fqn', None)
        stored[fqn] = stored.get(fqn, 0) + info.length
    for k in fqns:  # allocate nothing the files do not hold
        size = tensors[k].size
        numel = 1
        for n in size:
            numel *= n
        need = numel * tensors[k].properties.dtype.itemsize
        if need > stored.get(k, 0):
            raise _corrupt(path, f'{k} {list(size)} needs {need} bytes; its '
                           f'records hold {stored.get(k, 0)}')
    state = {k: torch.empty(tuple(tensors[k].size),
                            dtype=tensors[k].properties.dtype)
             for k in fqns}
    load = getattr(dcp, 'load', None) or dcp.load_state_dict  # torch < 2.2
    try:
        with warnings.catch_warnings():  # "assuming ... a single process"
            warnings.simplefilter('ignore', UserWarning)
            load(state, storage_reader=Reader(path), planner=Planner(),
                 no_dist=True)
    except (InputError, UnsafeCheckpointError, KeyboardInterrupt,
            SystemExit):
        raise
    except BaseException as err:  # torch's CheckpointException is one
        failures = getattr(err, 'failures', None) or {}
        for failure in failures.values():  # our own refusal, from a rank
            if isinstance(getattr(failure, 'exc', None),
                          (InputError, UnsafeCheckpointError)):
                raise failure.exc from None
        detail = _reason(err)
        if detail.startswith('Unsupported global'):
            raise UnsafeCheckpointError(
                f'{path}: refused to load: a tensor record needs more than '
                f'torch.load(weights_only=True) admits ({detail}); if you '
                'trust it, rerun with --unsafe-load (unsafe_load=True)'
            ) from None
        raise _corrupt(path, detail) from None
    return state


def _reason(err: BaseException) -> str:
    """The one line that says what failed inside torch's reader (its
    ``CheckpointException`` wraps each rank's exception)."""
    failures = getattr(err, 'failures', None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        err = getattr(inner, 'exc', inner)
    text = str(err)
    m = re.search(r'Unsupported global[^\n]*|Unsupported operand \d+|'
                  r'[^\n]*(?:truncated|failed finding central directory|'
                  r'No such file)[^\n]*', text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = m.group(0).strip() if m else (lines[0] if lines else '')
    return f'{type(err).__name__}: {detail}'[:200] if not detail.startswith(
        'Unsupported global') else detail[:200]


class _LazyStateDict(Mapping):
    """The tensors of one network, read on first access."""

    def __init__(self, source: 'DCPCheckpoint', prefix: str,
                 keys: List[str]) -> None:
        self._source, self._prefix, self._keys = source, prefix, keys
        self._tensors: Optional[Dict[str, torch.Tensor]] = None

    def _load(self) -> Dict[str, torch.Tensor]:
        if self._tensors is None:
            read = _read_tensors(self._source.path, self._source.metadata,
                                 [self._prefix + k for k in self._keys])
            self._tensors = {k: read[self._prefix + k] for k in self._keys}
        return self._tensors

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class NotRead:
    """An entry of the checkpoint that is not read (optimizer state, the
    iteration, heads): listed as not converted."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f'<not read: {self.what}>'


class DCPCheckpoint(Mapping):
    """A DCP directory as a checkpoint mapping (see the module doc).

    Attributes:
        path (str): The directory.
        metadata: Its checked ``Metadata``.
        layout (str): ``'dinov3-training'``, ``'dinov3-eval'`` or
            ``'generic'``.
    """

    def __init__(self, path: str, metadata: Any) -> None:
        self.path, self.metadata = path, metadata
        self._entries: Dict[str, Any] = {}
        self.layout = self._arrange(list(_tensor_keys(metadata)))

    def _net(self, prefix: str, keys: List[str]) -> Optional[_LazyStateDict]:
        """The ``backbone.*`` tensors under ``prefix`` (None if none)."""
        names = [k[len(prefix):] for k in keys if k.startswith(prefix)
                 and k[len(prefix):].startswith('backbone.')]
        return _LazyStateDict(self, prefix, names) if names else None

    def _shapes(self, prefix: str) -> Dict[str, Tuple[int, ...]]:
        return {k[len(prefix):]: tuple(v.size)
                for k, v in _tensor_keys(self.metadata).items()
                if k.startswith(prefix + 'backbone.')}

    def _arrange(self, keys: List[str]) -> str:
        nets = {net: self._net(f'model.{net}.', keys) for net in NETWORKS}
        top = sorted({k.split('.', 1)[0] for k in
                      self.metadata.state_dict_metadata} - {'model'})
        if any(nets.values()):
            ema = nets['model_ema'] or nets['teacher']
            self._entries['teacher'] = ema
            if nets['student'] is not None:
                self._entries['student'] = nets['student']
            if nets['model_ema'] is not None:
                self._entries['model_ema'] = nets['model_ema']
                if nets['teacher'] is not None and self._shapes(
                        'model.teacher.') != self._shapes('model.model_ema.'):
                    self._entries['distillation_teacher'] = NotRead(
                        'model.teacher.* (the frozen model distilled from)')
            others = sorted({k.split('.')[2] for k in keys
                             if k.startswith('model.') and k.count('.') > 2
                             and k.split('.')[1] in NETWORKS
                             and k.split('.')[2] != 'backbone'})
            if others:
                self._entries['heads'] = NotRead(', '.join(others))
            layout = 'dinov3-training'
        elif any(k.startswith('model.backbone.') for k in keys):
            self._entries['teacher'] = self._net('model.', keys)
            layout = 'dinov3-eval'
        else:
            model = [k[len('model.'):] for k in keys
                     if k.startswith('model.')]
            plain = [k for k in keys if k.split('.', 1)[0] != 'optimizer']
            if model:
                self._entries['model'] = _LazyStateDict(self, 'model.',
                                                        model)
            elif plain:
                self._entries['state_dict'] = _LazyStateDict(self, '',
                                                             plain)
                used = {k.split('.', 1)[0] for k in plain}
                top = [name for name in top if name not in used]
            layout = 'generic'
        for name in top:
            if name not in self._entries:
                self._entries[name] = NotRead(name)
        if not any(isinstance(v, _LazyStateDict)
                   for v in self._entries.values()):
            raise InputError(f'{self.path}: the torch.distributed.checkpoint '
                             'holds no tensors: there are no weights to '
                             'convert')
        return layout

    def __getitem__(self, key: str) -> Any:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def load_dcp(path: str, *, unsafe: bool = False,
             warn: Optional[Callable[[str], None]] = None) -> DCPCheckpoint:
    """Open the DCP directory ``path`` (its tensors are read on first
    use).

    Args:
        path (str): Directory holding ``.metadata`` and ``*.distcp``.
        unsafe (bool): Read it on a torch whose ``weights_only`` loader is
            not a safety boundary (< 2.6).
        warn (callable, optional): Unused (the signature of the other
            directory readers).

    Returns:
        DCPCheckpoint: The checkpoint mapping.

    Raises:
        InputError: Not a readable DCP directory (one line).
        UnsafeCheckpointError: Its metadata needs a global not admitted,
            or torch < 2.6 without ``unsafe``.
    """
    path = os.fspath(path)
    if not is_dcp_directory(path):
        raise InputError(f'{path}: no {METADATA_FILE}: not a torch.'
                         'distributed.checkpoint directory')
    if not TORCH_WEIGHTS_ONLY_IS_SAFE and not unsafe:
        raise UnsafeCheckpointError(
            f'{path}: torch.distributed.checkpoint directory: on torch '
            f'{torch.__version__} (< 2.6) torch reads its tensor records '
            'with a loader that is not a safety boundary; upgrade torch, or '
            'rerun with --unsafe-load if you trust it')
    return DCPCheckpoint(path, read_metadata(path))
