# Copyright (c) mmconv contributors. All rights reserved.
"""Hugging Face sources: model folders and ``hf://`` names.

A folder written by ``save_pretrained`` (``config.json`` with
``model.safetensors`` or ``pytorch_model.bin``, or their ``.index.json``
and shards) and a model of the Hugging Face Hub, ``hf://ORG/NAME[@REV]``
(resolved through huggingface_hub's cache), are read as one
:class:`~mmconv.containers.Assembled` checkpoint::

    {'state_dict': {HF key: tensor},   # the file's own names, all shards
     'config': {...},                  # config.json as plain JSON data
     'meta': {...}}                    # safetensors metadata ({} for .bin)

Every file goes through :func:`mmconv.reading.load_file` (safetensors
memory-mapped; ``pytorch_model*.bin`` weights-only with the allowlist);
shards are read one by one, after the index has been checked against the
folder, and each against the index.
"""
import json
import os
import re
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .containers import Assembled, is_state_dict
from .errors import InputError, UsageError
from .reading import load_file

__all__ = ['load_local', 'load_directory', 'is_hf_name', 'hf_snapshot',
           'CONFIG', 'WEIGHT_FILES']

#: The model's configuration in a Hugging Face folder.
CONFIG = 'config.json'
#: A folder's weight files, in the order ``from_pretrained`` prefers them.
WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json',
                'pytorch_model.bin', 'pytorch_model.bin.index.json')
#: Weights mmconv does not read (TensorFlow, Flax).
_OTHER_FRAMEWORKS = ('tf_model.h5', 'flax_model.msgpack',
                     'tf_model.h5.index.json',
                     'flax_model.msgpack.index.json')
_CHECKPOINT_SUFFIXES = ('.safetensors', '.bin', '.pth', '.pt', '.pkl',
                        '.pth.tar', '.ckpt')
_WANTED = ('a Hugging Face model folder: config.json with model.safetensors '
           'or pytorch_model.bin, or their .index.json and shards')

#: ``hf://[models/]ORG/NAME[@REVISION]`` (``refs/pr/N`` revisions too).
_HF_NAME = re.compile(r'^hf://(?:models/)?(?P<repo>[\w.-]+(?:/[\w.-]+)?)'
                      r'(?:@(?P<rev>refs/pr/\d+|[^/@#?]+))?/?$')


def _listing(path: str) -> List[str]:
    """The names in a directory (InputError if it cannot be listed)."""
    try:
        return sorted(os.listdir(path))
    except OSError as err:
        raise InputError(f'{path}: cannot list the directory '
                         f'({err.strerror or err}); check its permissions'
                         ) from None


def _describe(path: str) -> str:
    """Why the directory ``path`` is no source mmconv reads, and the fix."""
    names = _listing(path)
    if not names:
        return f'{path} is an empty directory; give {_WANTED}'
    other = [n for n in names if n in _OTHER_FRAMEWORKS]
    if other:
        return (f'{path} holds only {", ".join(other)} (TensorFlow/Flax '
                'weights), which mmconv does not read; get the PyTorch '
                'weights (model.safetensors or pytorch_model.bin)')
    if CONFIG in names:
        return (f'{path} has {CONFIG} but no weights (model.safetensors, '
                'pytorch_model.bin or their .index.json and shards); '
                'download the weights too')
    files = [n for n in names if n.endswith(_CHECKPOINT_SUFFIXES)
             and os.path.isfile(os.path.join(path, n))]
    if files:
        shown = ', '.join(files[:3]) + (' ...' if len(files) > 3 else '')
        return (f'{path} is a directory, not {_WANTED}; give the checkpoint '
                f'file inside it ({shown})')
    return f'{path} is a directory with no checkpoint in it; give {_WANTED}'


def load_directory(path: str, *, unsafe: bool = False,
                   warn: Optional[Callable[[str], None]] = None,
                   lazy: bool = False) -> Any:
    """Load the checkpoint a directory holds (every directory source
    passes here).

    Args:
        path (str): A Hugging Face model folder (sharded or not).
        unsafe (bool): Allow arbitrary pickles in ``.bin`` files.
        warn (callable, optional): Receives the ``unsafe`` warning.
        lazy (bool): Safetensors weights as lazy tensors (read when
            written).

    Returns:
        Assembled: ``{'state_dict', 'config' (if any), 'meta'}``.

    Raises:
        InputError: Not such a folder (the message says what it holds and
            what it should), or a file of it is missing or inconsistent.
    """
    if os.path.isfile(os.path.join(path, '.metadata')):
        # torch.distributed.checkpoint directory (.metadata + *.distcp)
        from .dcp import load_dcp
        return load_dcp(path, unsafe=unsafe, warn=warn)
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return _assemble(path, name, unsafe, warn, lazy=lazy)
    raise InputError(_describe(path))


def load_local(path: str, *, unsafe: bool = False,
               warn: Optional[Callable[[str], None]] = None,
               lazy: bool = False) -> Any:
    """Load a local checkpoint: a directory (:func:`load_directory`), a
    weight file of a Hugging Face folder (with the folder's
    ``config.json``), a shard index, or any file :func:`load_file` reads
    (``lazy``: safetensors weights as lazy tensors).
    """
    if os.path.isdir(path):
        return load_directory(path, unsafe=unsafe, warn=warn, lazy=lazy)
    folder, name = os.path.split(path)
    folder = folder or os.curdir
    if name == CONFIG and os.path.isfile(path):
        raise InputError(f'{path} is the model\'s configuration, not its '
                         f'weights; give the folder {folder}')
    if name.endswith('.index.json') and os.path.isfile(path):
        return _assemble(folder, name, unsafe, warn, lazy=lazy)
    loaded = load_file(path, unsafe=unsafe, warn=warn, lazy=lazy)
    if name in WEIGHT_FILES and os.path.isfile(os.path.join(
            folder, CONFIG)) and (isinstance(loaded, Assembled)
                                  or is_state_dict(loaded)):
        return _assemble(folder, name, unsafe, warn, loaded)
    return loaded


def _read_config(folder: str) -> Optional[Dict[str, Any]]:
    """``config.json`` of ``folder`` as plain JSON data (None if absent)."""
    path = os.path.join(folder, CONFIG)
    if not os.path.isfile(path):
        return None
    config = _read_json(path, 'the model configuration')
    if not isinstance(config, dict):
        raise InputError(f'{path}: not a JSON object (a '
                         f'{type(config).__name__}); download it again')
    return config


def _read_json(path: str, what: str) -> Any:
    """A JSON file's data (InputError naming the file if it is not
    JSON)."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (ValueError, RecursionError) as err:
        detail = str(err).splitlines()[0][:120] if str(err) else \
            type(err).__name__
        raise InputError(f'{path}: not valid JSON ({detail}), so not '
                         f'{what}; download it again') from None
    except OSError as err:
        raise InputError(f'{path}: cannot read it ({err.strerror or err}); '
                         'check the file') from None


def _tensors(loaded: Any, path: str) -> Tuple[Dict[str, Any], Dict]:
    """The state dict and metadata of one loaded weight file."""
    if isinstance(loaded, Assembled):  # .safetensors
        return loaded['state_dict'], dict(loaded.get('meta', {}))
    if not is_state_dict(loaded):
        raise InputError(f'{path}: not a state dict of tensors (a '
                         f'{type(loaded).__name__}), as Hugging Face weight '
                         'files are; give this file, not its folder')
    return dict(loaded), {}


def _assemble(folder: str, name: str, unsafe: bool,
              warn: Optional[Callable[[str], None]],
              loaded: Any = None, lazy: bool = False) -> Assembled:
    """The checkpoint of ``folder`` from its weight file or index ``name``
    (``loaded``: that file, already read)."""
    config = _read_config(folder)
    path = os.path.join(folder, name)
    if name.endswith('.index.json'):
        state_dict, meta = _load_sharded(path, unsafe, warn, lazy)
    else:
        if loaded is None:
            loaded = load_file(path, unsafe=unsafe, warn=warn, lazy=lazy)
        state_dict, meta = _tensors(loaded, path)
    out = Assembled(state_dict=state_dict)
    if config is not None:
        out['config'] = config
    out['meta'] = meta
    return out


def _shard_index(path: str) -> Dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file) of an index."""
    index = _read_json(path, 'a shard index')
    weight_map = index.get('weight_map') if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str)
            for k, v in weight_map.items()):
        raise InputError(f'{path}: not a shard index (it needs a non-empty '
                         '"weight_map" of tensor names to shard files); '
                         'download it again')
    for shard in set(weight_map.values()):
        if os.path.basename(shard) != shard or shard in ('', '.', '..') \
                or '\\' in shard:
            raise InputError(f'{path}: names the shard {shard!r}, which is '
                             'not a file name in its folder; the index is '
                             'not from save_pretrained')
    return weight_map


def _load_sharded(path: str, unsafe: bool,
                  warn: Optional[Callable[[str], None]], lazy: bool = False
                  ) -> Tuple[Dict[str, Any], Dict]:
    """All tensors of a sharded checkpoint, shard by shard, each checked
    against the index ``path`` (every shard is checked to exist before any
    is read)."""
    folder, index_name = os.path.split(path)
    weight_map = _shard_index(path)
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards
               if not os.path.isfile(os.path.join(folder, s))]
    if missing:
        more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
        raise InputError(f'{path}: names the shard {missing[0]}{more}, '
                         f'which is missing from {folder or os.curdir}; '
                         'download the missing shards')
    state_dict: Dict[str, Any] = {}
    meta: Dict[str, Any] = {}
    for shard in shards:
        shard_path = os.path.join(folder, shard)
        part, shard_meta = _tensors(load_file(shard_path, unsafe=unsafe,
                                              warn=warn, lazy=lazy),
                                    shard_path)
        stray = [k for k in part if weight_map.get(k) != shard]
        if stray:
            where = weight_map.get(stray[0])
            raise InputError(
                f'{shard_path}: holds the tensor {stray[0]!r}, which '
                f'{index_name} ' + (f'places in {where}' if where else
                                    'does not list') +
                ' (the index and the shards disagree); download the model '
                'again')
        lacking = [k for k, s in weight_map.items()
                   if s == shard and k not in part]
        if lacking:
            raise InputError(
                f'{shard_path}: lacks the tensor {lacking[0]!r}'
                + (f' (and {len(lacking) - 1} more)' if len(lacking) > 1
                   else '') + f', which {index_name} places in it (the '
                'index and the shards disagree); download the model again')
        state_dict.update(part)
        for key, value in shard_meta.items():
            meta.setdefault(key, value)
    return state_dict, meta


# ------------------------------------------------------------- hf:// names


def is_hf_name(name: str) -> bool:
    """Whether ``name`` is a Hugging Face Hub name (``hf://...``)."""
    return os.fspath(name).startswith('hf://')


def _parse(name: str) -> Tuple[str, Optional[str]]:
    """``hf://ORG/NAME[@REV]`` -> ``(repo id, revision or None)``."""
    found = _HF_NAME.match(name)
    if found:
        return found.group('repo'), found.group('rev')
    if re.match(r'^hf://(datasets|spaces|buckets|kernels)/', name):
        raise UsageError(f'{name}: not a model repository; give '
                         'hf://ORG/NAME[@REVISION] of a model')
    raise UsageError(f'{name}: not a Hugging Face model name; write '
                     'hf://ORG/NAME or hf://ORG/NAME@REVISION (a branch, tag '
                     'or commit)')


@contextmanager
def _progress_bars(progress: Optional[bool]) -> Iterator[None]:
    """huggingface_hub's own progress bars, off with ``progress=False``
    (None: huggingface_hub's default, ``HF_HUB_DISABLE_PROGRESS_BARS``)."""
    if progress is not False:
        yield
        return
    from huggingface_hub.utils import (are_progress_bars_disabled,
                                       disable_progress_bars,
                                       enable_progress_bars)
    was = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was:
            enable_progress_bars()


def _hub_error(name: str, revision: Optional[str], err: Exception,
               hub: Any) -> Exception:
    """A one-line mmconv error for a failed huggingface_hub call."""
    errors = getattr(hub, 'errors', None) or hub.utils

    def kind(cls_name: str) -> bool:
        cls = getattr(errors, cls_name, None) or getattr(hub.utils, cls_name,
                                                         None)
        return cls is not None and isinstance(err, cls)

    cache = hub.constants.HF_HUB_CACHE
    if kind('HFValidationError'):
        return UsageError(f'{name}: not a valid Hugging Face repository name '
                          f'({str(err).splitlines()[0][:120]}); check it')
    if kind('GatedRepoError'):
        return InputError(f'{name}: a gated model: accept its terms on the '
                          'Hub and log in (hf auth login, or HF_TOKEN)')
    if kind('RepositoryNotFoundError'):
        return InputError(f'{name}: no such model on the Hugging Face Hub, '
                          'or it is private (log in: hf auth login, or '
                          'HF_TOKEN); check the name')
    if kind('RevisionNotFoundError'):
        return InputError(f'{name}: the model has no revision {revision!r}; '
                          'give a branch, tag or commit it has')
    if kind('LocalEntryNotFoundError') or kind('IncompleteSnapshotError'):
        offline = hub.constants.HF_HUB_OFFLINE
        why = ('downloads are off (HF_HUB_OFFLINE=1)' if offline
               else 'the Hub cannot be reached')
        return InputError(f'{name}: not (completely) in the Hugging Face '
                          f'cache {cache} and {why}; download it once online, '
                          'or set HF_HUB_CACHE to the cache that holds it')
    detail = (str(err).strip().splitlines() or [''])[0][:160]
    return InputError(f'{name}: download from the Hugging Face Hub failed '
                      f'({type(err).__name__}: {detail}); check the name and '
                      f'the network, or give a local folder')


def hf_snapshot(name: str, progress: Optional[bool] = None) -> str:
    """The local folder (huggingface_hub cache snapshot) of ``hf://`` model
    ``name``, holding only ``config.json`` and the weights mmconv reads.

    Downloads go through huggingface_hub (its cache: ``HF_HUB_CACHE``, else
    ``HF_HOME/hub``; ``HF_HUB_OFFLINE=1`` uses the cache only; its progress
    bars), and fetch, in ``from_pretrained``'s order of preference,
    ``model.safetensors``, else the shards its index names, else
    ``pytorch_model.bin``, else the ``.bin`` shards.

    Args:
        name (str): ``hf://ORG/NAME`` or ``hf://ORG/NAME@REVISION``.
        progress (bool, optional): False hides the progress bars.

    Returns:
        str: The snapshot folder.

    Raises:
        UsageError: Malformed name; huggingface_hub not installed.
        InputError: Unknown, gated or private model or revision; not cached
            while offline; failed download.
    """
    repo, revision = _parse(name)
    try:
        import huggingface_hub as hub
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UsageError(f'{name}: hf:// names need huggingface_hub, which '
                         "is not installed; pip install 'mmconv[hf]'"
                         ) from None
    from .version import __version__

    def fetch(patterns: List[str]) -> str:
        try:
            with _progress_bars(progress):
                return snapshot_download(
                    repo, revision=revision, allow_patterns=patterns,
                    library_name='mmconv', library_version=__version__)
        except Exception as err:  # hub/network errors vary: one line
            raise _hub_error(name, revision, err, hub) from None

    folder = fetch([CONFIG, 'model.safetensors',
                    'model.safetensors.index.json',
                    'pytorch_model.bin.index.json'])
    for single, index in (('model.safetensors',
                           'model.safetensors.index.json'),
                          ('pytorch_model.bin',
                           'pytorch_model.bin.index.json')):
        if single == 'pytorch_model.bin' and not any(
                os.path.isfile(os.path.join(folder, n))
                for n in (single, index)):
            folder = fetch([single])
        if os.path.isfile(os.path.join(folder, single)):
            return folder
        if os.path.isfile(os.path.join(folder, index)):
            shards = sorted(set(_shard_index(
                os.path.join(folder, index)).values()))
            return fetch(shards)
    return folder
