# Copyright (c) mmconv contributors. All rights reserved.
"""Reading and writing checkpoints: the only module that touches files.

Reading never runs code from the file: PyTorch files go through
``torch.load(weights_only=True)`` with the narrow allowlist
:data:`SAFE_GLOBALS`; ``.pkl`` files through :class:`RestrictedUnpickler`
(numpy arrays/dtypes and plain containers only); ``.safetensors`` through
safetensors. Anything else needs an explicit ``unsafe=True``.

Writing is atomic: a temporary file in the destination directory, flushed
and fsynced, then ``os.replace``; an interrupted write leaves the previous
destination (or none), never a truncated file.
"""
import argparse
import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlparse

import numpy as np
import torch

from .errors import (InputError, MMConvError, OutputError,
                     UnsafeCheckpointError)

__all__ = ['load_file', 'load_source', 'local_copy', 'is_remote',
           'TORCH_WEIGHTS_ONLY_IS_SAFE', 'allowed_global',
           'save_file', 'SAFE_GLOBALS', 'RestrictedUnpickler',
           'check_destination', 'arrays_to_tensors',
           'allow_safe_globals_everywhere', 'safe_globals_context']


def _numpy_globals() -> List[Any]:
    """numpy objects numpy-holding checkpoints reference when unpickled."""
    from numpy.core import multiarray
    found = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    # numpy>=1.25 pickles dtypes as numpy.dtypes.<Name>DType classes.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes)
                  if n.endswith('DType')]
    return found


#: The statistics methods a pickled ``HistoryBuffer`` refers to.
HISTORY_STATISTICS = frozenset(['min', 'max', 'current', 'mean'])


def _mmengine_globals() -> List[Any]:
    """MMEngine logging objects stored in ``message_hub`` of its checkpoints.

    A pickled ``HistoryBuffer`` references its statistics functions as
    ``getattr(HistoryBuffer, 'mean')``; ``builtins.getattr`` itself is never
    admitted: the pickle's ``getattr`` resolves to :func:`_history_getattr`,
    which only answers those lookups.
    """
    try:
        from mmengine.logging import HistoryBuffer
    except ImportError:  # pragma: no cover - mmengine is a dependency
        return []

    def _history_getattr(obj: Any, name: str) -> Any:
        if obj is HistoryBuffer and name in HISTORY_STATISTICS:
            return getattr(obj, name)
        raise pickle.UnpicklingError(
            f'Unsupported global: GLOBAL builtins.getattr '
            f'({type(obj).__name__}.{name})')

    return [HistoryBuffer, (_history_getattr, 'builtins.getattr')]


#: Benign classes/functions real checkpoints contain, admitted by
#: ``torch.load(weights_only=True)``: ``argparse.Namespace`` (``args`` of
#: MoCo/DINO/DETR checkpoints), numpy arrays, dtypes and scalars (epoch
#: counters, detectron2 arrays), MMEngine's ``HistoryBuffer`` (and only its
#: own statistics functions through ``getattr``), yacs ``CfgNode`` (Swin /
#: SimMIM ``config``, as :class:`YacsConfig`).
def exclude_bias_and_norm(param: Any) -> bool:
    """Inert stand-in for VICReg's training-script function of this name.

    VICReg's optimizer param groups hold a reference to the function
    ``exclude_bias_and_norm`` of its training script, so its checkpoints
    name ``__main__.exclude_bias_and_norm`` (or ``main_vicreg.…``). The
    reference is only stored, never called, when converting; it resolves to
    this function instead of importing anything.
    """
    return param.ndim == 1


class YacsConfig:
    """Inert stand-in for ``yacs.config.CfgNode``.

    microsoft/Swin-Transformer and microsoft/SimMIM save their yacs
    configuration in every training checkpoint (``config``). A ``CfgNode``
    is a ``dict`` subclass pickled as ``NEWOBJ`` + its items + its
    ``__dict__`` flags (``__immutable__``, ``__new_allowed__``, ...);
    "creating" one here makes a plain ``OrderedDict`` (which both
    weights-only loaders fill item by item), so the configuration reads as
    nested dicts and yacs is never imported.
    """

    def __new__(cls, *args: Any) -> 'OrderedDict':  # type: ignore[misc]
        return OrderedDict()


SAFE_GLOBALS: List[Any] = [argparse.Namespace] + _numpy_globals() + [
    (exclude_bias_and_norm, f'{module}.exclude_bias_and_norm')
    for module in ('__main__', 'main_vicreg')
] + [(YacsConfig, 'yacs.config.CfgNode'), set]  # its flags hold a set

#: Allowlisted globals whose modules are imported only when a file needs
#: them (importing MMEngine costs start-up time the command lines avoid).
_LAZY_GLOBALS = {
    'mmengine.logging.history_buffer.HistoryBuffer': _mmengine_globals,
}


def _admit_lazy(name: str) -> bool:
    """Add the lazily imported allowlist entry ``name``; False if none."""
    loader = _LAZY_GLOBALS.pop(name, None)
    if loader is None:
        return False
    SAFE_GLOBALS.extend(loader())
    return True


#: ``(module, name)`` pairs :class:`RestrictedUnpickler` admits.
PICKLE_ALLOWLIST = frozenset([
    ('collections', 'OrderedDict'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'),
    ('numpy._core.numeric', '_frombuffer'),
    ('_codecs', 'encode'),
])


def _torch_version() -> Tuple[int, int]:
    """``(major, minor)`` of the running torch."""
    match = re.match(r'(\d+)\.(\d+)', torch.__version__)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


#: Whether ``torch.load(weights_only=True)`` is a safety boundary: not
#: before torch 2.6 (CVE-2025-32434), where mmconv reads torch files with
#: its own restricted reader (:mod:`mmconv.torchzip`) instead.
TORCH_WEIGHTS_ONLY_IS_SAFE = _torch_version() >= (2, 6)


def _global_name(obj: Any) -> str:
    """``module.qualname`` of an allowlisted object."""
    return f'{obj.__module__}.{obj.__qualname__}'


def allowed_global(module: str, name: str) -> Any:
    """The object the pickle global ``module.name`` stands for, if it is on
    mmconv's allowlist (:data:`SAFE_GLOBALS`, :data:`PICKLE_ALLOWLIST`,
    and lazily imported entries); None otherwise."""
    full = f'{module}.{name}'
    if full in _LAZY_GLOBALS:
        _admit_lazy(full)
    for entry in SAFE_GLOBALS:
        obj, alias = entry if isinstance(entry, tuple) else (entry, None)
        if full == (alias or _global_name(obj)):
            return obj
    if (module, name) in PICKLE_ALLOWLIST or (
            module == 'numpy.dtypes' and name.endswith('DType')):
        return pickle.Unpickler.find_class(
            RestrictedUnpickler(io.BytesIO()),
            module.replace('numpy._core', 'numpy.core'), name)
    return None


def safe_globals_context() -> Any:
    """Context admitting :data:`SAFE_GLOBALS` in ``torch.load``.

    Only globals not already allowed process-wide are added (torch removes
    what the context added on exit, so re-adding registered ones would
    unregister them).
    """
    if not hasattr(torch.serialization, 'safe_globals'):  # torch < 2.5
        return contextlib.nullcontext()
    present = torch.serialization.get_safe_globals()
    return torch.serialization.safe_globals(
        [g for g in SAFE_GLOBALS if g not in present])


def allow_safe_globals_everywhere() -> None:
    """Add :data:`SAFE_GLOBALS` to torch's process-wide weights-only allowlist.

    MMEngine 0.10.7 calls plain ``torch.load`` (``weights_only=True`` since
    torch 2.6), which refuses the ``HistoryBuffer`` objects MMEngine itself
    writes into every training checkpoint, so ``load_from``, ``resume`` and
    ``mim test`` fail on MMEngine's own files. ``import mmconv`` calls this,
    which lets those loads succeed while keeping ``weights_only`` on: only
    the narrow allowlist above is added, never ``weights_only=False``.
    """
    for name in list(_LAZY_GLOBALS):
        _admit_lazy(name)
    if hasattr(torch.serialization, 'add_safe_globals'):  # torch >= 2.4
        torch.serialization.add_safe_globals(SAFE_GLOBALS)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler admitting only numpy arrays/dtypes and plain containers."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve a global only if it is on :data:`PICKLE_ALLOWLIST`."""
        if (module, name) in PICKLE_ALLOWLIST or (
                module == 'numpy.dtypes' and name.endswith('DType')):
            return super().find_class(module.replace('numpy._core',
                                                     'numpy.core'), name)
        raise pickle.UnpicklingError(
            f'Unsupported global: GLOBAL {module}.{name}')


def _check_source(path: str) -> None:
    """Raise :class:`InputError` unless ``path`` is a non-empty file."""
    if not os.path.exists(path):
        raise InputError(f'{path}: no such file; check the path')
    if os.path.isdir(path):
        raise InputError(f'{path} is a directory; give the checkpoint file '
                         'inside it')
    if os.path.getsize(path) == 0:
        raise InputError(f'{path} is empty (0 bytes): the download or copy '
                         'did not complete; fetch it again')


def _refused_global(err: Exception) -> Optional[str]:
    """The global a weights-only load refused, if that is the error."""
    m = re.search(r'(?:Unsupported global: |unsupported )GLOBAL ([\w\.]+)',
                  str(err))
    return m.group(1) if m else None


def _unsafe_message(path: str, name: str) -> str:
    """The refusal message for a file needing the global ``name``."""
    return (f'{path}: refused to load: it needs {name}, which is not '
            "on mmconv's allowlist of safe types and could run code; if you "
            'trust the file, rerun with --unsafe-load (unsafe_load=True)')


def _corrupt(path: str, err: Exception) -> InputError:
    """A one-line 'truncated or corrupt' error for ``path``."""
    text = str(err)
    m = re.search(r'Unsupported operand \d+|[^\n]*truncated[^\n]*', text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    detail = m.group(0) if m else (lines[0] if lines else type(err).__name__)
    return InputError(f'{path}: not a readable checkpoint, or truncated/'
                      f'corrupt ({detail.strip()[:120]}); download it again')


def arrays_to_tensors(obj: Any) -> Any:
    """Turn numpy arrays inside nested dicts into tensors (no copy)."""
    if isinstance(obj, np.ndarray):  # (ascontiguousarray makes 0-d 1-d)
        return torch.from_numpy(obj if obj.flags.c_contiguous
                                else np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return type(obj)((k, arrays_to_tensors(v)) for k, v in obj.items())
    return obj


def _load_pickle(path: str, unsafe: bool) -> Any:
    """Load a ``.pkl`` with the restricted unpickler; arrays -> tensors."""
    with open(path, 'rb') as f:
        try:
            if unsafe:
                return arrays_to_tensors(pickle.load(f, encoding='latin1'))
            return arrays_to_tensors(
                RestrictedUnpickler(f, encoding='latin1').load())
        except pickle.UnpicklingError as err:
            refused = _refused_global(err)
            if refused:
                raise UnsafeCheckpointError(
                    _unsafe_message(path, refused)) from None
            raise _corrupt(path, err) from None
        except (EOFError, ValueError, TypeError, AttributeError,
                ImportError, IndexError, KeyError) as err:
            raise _corrupt(path, err) from None


def _load_safetensors(path: str) -> Dict[str, Any]:
    """Load a ``.safetensors`` file as ``{'state_dict': ..., 'meta': ...}``."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework='pt', device='cpu') as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise _corrupt(path, err) from None
    return {'state_dict': tensors,
            'meta': {k: _from_json(v) for k, v in meta.items()}}


def _from_json(value: str) -> Any:
    """A metadata value as :func:`_safetensors_bytes` stored it (non-string
    values are JSON-encoded; safetensors metadata holds strings only)."""
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, (dict, list)) or \
        value in ('true', 'false', 'null') or value[:1].isdigit() \
        or value[:1] == '-' else value


def load_file(path: str, *, unsafe: bool = False, mmap: bool = True,
              warn: Callable[[str], None] = None,
              reader: str = 'auto') -> Any:
    """Load a checkpoint file without running code from it.

    Args:
        path (str): ``.pth``/``.pth.tar``/``.pt``/``.pkl``/``.safetensors``.
        unsafe (bool): Allow arbitrary pickled objects (runs code from the
            file; only for files you trust). Defaults to False.
        mmap (bool): Memory-map zip-format PyTorch files so only the tensors
            that are used are read. Defaults to True.
        warn (callable, optional): Receives the warning printed for
            ``unsafe=True``. Defaults to :func:`warnings.warn`.
        reader (str): How torch files are read: ``'torch'`` =
            ``torch.load(weights_only=True)`` with the allowlist,
            ``'mmconv'`` = mmconv's own restricted zip reader
            (:mod:`mmconv.torchzip`), ``'auto'`` = ``'torch'`` where that is
            a safety boundary (torch >= 2.6), ``'mmconv'`` before.

    Returns:
        The loaded object (usually a dict).

    Raises:
        InputError: Missing, directory, empty, truncated or corrupt file.
        UnsafeCheckpointError: The file needs a global not on the allowlist.
    """
    path = os.fspath(path)
    _check_source(path)
    if unsafe:
        (warn or warnings.warn)(
            f'loading {path} with unsafe_load: pickled code in it WILL run')
    if path.endswith('.safetensors'):
        return _load_safetensors(path)
    if path.endswith(('.pkl', '.pickle')):
        return _load_pickle(path, unsafe)
    is_zip = zipfile.is_zipfile(path)
    if reader == 'auto':
        reader = 'torch' if TORCH_WEIGHTS_ONLY_IS_SAFE else 'mmconv'
    if reader == 'mmconv' and not unsafe and not is_zip:
        with open(path, 'rb') as f:
            head = f.read(4)
        if head[:2] == b'PK':
            raise _corrupt(path, ValueError(
                'zip archive is truncated: its central directory is '
                'missing'))
        if head[:1] != b'\x80':  # not a pickle: not a legacy torch file
            raise _corrupt(path, ValueError('not a torch.save file'))
        raise UnsafeCheckpointError(
            f'{path}: legacy (non-zip) torch file: on torch '
            f'{torch.__version__} (< 2.6, whose weights_only loader is not '
            'safe) mmconv reads only the zip format torch>=1.6 writes; '
            're-save it with torch.save, upgrade torch, or rerun with '
            '--unsafe-load if you trust it')
    while True:
        try:
            if reader == 'mmconv' and not unsafe:
                from .torchzip import load_torch_zip
                return load_torch_zip(path, allowed_global)
            return _torch_load(path, unsafe, mmap and is_zip)
        except pickle.UnpicklingError as err:
            refused = _refused_global(err)
            if refused and _admit_lazy(refused):
                continue  # e.g. HistoryBuffer: import MMEngine, retry
            if refused:
                raise UnsafeCheckpointError(
                    _unsafe_message(path, refused)) from None
            raise _corrupt(path, err) from None
        except (RuntimeError, EOFError, ValueError, OSError, KeyError,
                AttributeError, TypeError, IndexError, zipfile.BadZipFile,
                UnicodeDecodeError) as err:
            raise _corrupt(path, err) from None


#: ``scheme://`` (optionally ``backend:scheme://``) at the start of a name:
#: URLs, MMEngine model-zoo names and MMEngine file backends.
_REMOTE = re.compile(r'^(?:[\w.+-]+:)?[a-zA-Z][\w.+-]*://')


def is_remote(name: str) -> bool:
    """Whether ``name`` is a URL / ``scheme://`` name rather than a path."""
    return bool(_REMOTE.match(os.fspath(name)))


def _resolve_model_zoo(name: str) -> str:
    """MMEngine's model-zoo names -> the URL (or local file) they stand for.

    ``torchvision://``/``modelzoo://``, ``open-mmlab://``/``openmmlab://``
    and ``mmcls://`` resolve through MMEngine's own tables, exactly as its
    ``CheckpointLoader`` resolves them; any other name is returned as is.
    """
    from mmengine.runner import checkpoint as ckpt
    for prefixes, table in (
            (('torchvision://', 'modelzoo://'), ckpt.get_torchvision_models),
            (('open-mmlab://', 'openmmlab://'), ckpt.get_external_models),
            (('mmcls://', ), ckpt.get_mmcls_models)):
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None:
            continue
        model = name[len(prefix):]
        if 'open' in prefix:
            model = ckpt.get_deprecated_model_names().get(model, model)
        urls = table()
        if model not in urls:
            raise InputError(f'{name}: unknown model name {model!r} for '
                             f'{prefix}; check the name')
        url = urls[model]
        if not is_remote(url):  # open-mmlab:// entries may be local files
            url = os.path.join(ckpt._get_mmengine_home(), url)
        return url
    return name


def _download(url: str, progress: bool) -> str:
    """Download ``url`` once into torch's hub cache (as MMEngine and
    ``torch.hub`` do: ``<hub dir>/checkpoints/<file name>``); return the
    local path. In a distributed run rank 0 downloads first."""
    model_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
    name = os.path.basename(urlparse(url).path) or hashlib.sha256(
        url.encode()).hexdigest()[:16]
    cached = os.path.join(model_dir, name)

    def fetch() -> None:
        if os.path.exists(cached):
            return
        os.makedirs(model_dir, exist_ok=True)
        try:  # writes a temporary file, then renames it: never half a file
            torch.hub.download_url_to_file(url, cached, progress=progress)
        except (OSError, ValueError) as err:  # URLError/HTTPError: OSError
            raise InputError(f'{url}: download failed ({err}); check the URL '
                             'and the network, or download the file and '
                             'give its local path') from None

    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = (torch.distributed.get_rank(),
                       torch.distributed.get_world_size())
    if rank == 0:
        fetch()
    if world > 1:
        torch.distributed.barrier()
        fetch()
    return cached


@contextmanager
def local_copy(name: str, progress: Optional[bool] = None) -> Iterator[str]:
    """A local path holding the checkpoint ``name``; nothing is unpickled.

    * local paths (``~`` expanded) are used in place;
    * ``http(s)://`` URLs (and MMEngine's ``torchvision://``,
      ``open-mmlab://``, ``mmcls://`` names, resolved to their URLs) are
      downloaded once into torch's hub cache, with a progress bar;
    * any other ``scheme://`` name is fetched to a temporary local file
      through :func:`mmengine.fileio.get_local_path`, i.e. by whichever
      MMEngine file backend is registered for it (``s3://``, ``petrel://``,
      user backends).

    Args:
        name (str): Path, URL or ``scheme://`` name.
        progress (bool, optional): Show a download progress bar. Defaults to
            whether standard error is a terminal.

    Yields:
        str: The local path (valid inside the ``with`` block).
    """
    name = os.fspath(name)
    if not is_remote(name):
        yield os.path.expanduser(name)
        return
    url = _resolve_model_zoo(name)
    if not is_remote(url):
        yield url
    elif url.startswith(('http://', 'https://')):
        yield _download(url, os.isatty(2) if progress is None else progress)
    else:
        from mmengine.fileio import get_local_path
        try:
            context = get_local_path(url)
            path = context.__enter__()
        except Exception as err:  # backend errors vary: one line, exit 3
            raise InputError(f'{name}: cannot fetch it through MMEngine\'s '
                             f'file backends ({type(err).__name__}: {err}); '
                             'register a backend for this prefix or give a '
                             'local path') from None
        try:
            yield path
        finally:
            context.__exit__(None, None, None)


def load_source(name: str, *, unsafe: bool = False,
                warn: Optional[Callable[[str], None]] = None,
                progress: Optional[bool] = None) -> Any:
    """Load a checkpoint given by path, URL or MMEngine ``scheme://`` name.

    Every source takes the same safe path: it is made local with
    :func:`local_copy` (no code runs while fetching), then read by
    :func:`load_file` (weights-only with mmconv's allowlist, memory-mapped).
    Only ``unsafe=True`` lifts the allowlist, with a warning.

    Args:
        name (str): Path, ``http(s)://`` URL or ``scheme://`` name.
        unsafe (bool): Allow arbitrary pickles (trusted files only).
        warn (callable, optional): Receives the ``unsafe`` warning.
        progress (bool, optional): Download progress bar (see
            :func:`local_copy`).

    Returns:
        The loaded object.

    Raises:
        InputError: Missing/corrupt file, failed download, unknown name.
        UnsafeCheckpointError: The file needs a global not on the allowlist.
    """
    name = os.fspath(name)
    with local_copy(name, progress) as path:
        if path == os.path.expanduser(name):
            return load_file(path, unsafe=unsafe, warn=warn)
        try:
            return load_file(path, unsafe=unsafe, warn=warn)
        except MMConvError as err:  # name the URL, and where it was cached
            raise type(err)(str(err).replace(
                path, f'{name} (local copy {path})', 1)) from None


def _torch_load(path: str, unsafe: bool, mmap: bool) -> Any:
    """``torch.load`` to CPU, weights-only with the allowlist unless
    ``unsafe``."""
    if unsafe:
        return torch.load(path, map_location='cpu', weights_only=False,
                          mmap=mmap)
    with safe_globals_context():
        return torch.load(path, map_location='cpu', weights_only=True,
                          mmap=mmap)


def check_destination(dst: str, src: Optional[str] = None,
                      force: bool = False) -> None:
    """Refuse destinations that must not be written.

    Args:
        dst (str): Output path.
        src (str, optional): Source path; writing over it is refused.
        force (bool): Allow overwriting an existing ``dst``.

    Raises:
        OutputError: ``dst`` is the source, a directory, already exists
            without ``force``, or its directory is missing/unwritable.
    """
    dst = os.fspath(dst)
    parent = os.path.dirname(os.path.abspath(dst))
    if src is not None and os.path.exists(dst) and os.path.exists(src) \
            and os.path.samefile(src, dst):
        raise OutputError(f'{dst} is the source file itself; write the '
                          'converted checkpoint to another path')
    if os.path.isdir(dst):
        raise OutputError(f'{dst} is a directory; give a file name such as '
                          f'{os.path.join(dst, "converted.pth")}')
    if os.path.exists(dst) and not force:
        raise OutputError(f'{dst} already exists; pass --force to overwrite '
                          'it')
    if not os.path.isdir(parent):
        raise OutputError(f'{dst}: directory {parent} does not exist; '
                          'create it first')
    if not os.access(parent, os.W_OK):
        raise OutputError(f'{dst}: directory {parent} is not writable')


class _HashingWriter(io.RawIOBase):
    """File wrapper computing sha256 of everything written through it."""

    def __init__(self, raw) -> None:
        self.raw, self.sha256 = raw, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _safetensors_bytes(obj: Dict[str, Any]) -> bytes:
    """Serialise ``{'state_dict', 'meta'}`` as safetensors bytes."""
    from safetensors.torch import save
    meta = {k: v if isinstance(v, str) else json.dumps(v)
            for k, v in (obj.get('meta') or {}).items()}
    tensors = {k: v.contiguous() for k, v in obj['state_dict'].items()}
    return save(tensors, metadata=meta)


def save_file(obj: Dict[str, Any], dst: str, *, src: Optional[str] = None,
              force: bool = False, out_format: Optional[str] = None,
              publish: bool = False) -> Tuple[str, str]:
    """Write a checkpoint atomically.

    Args:
        obj (dict): ``{'state_dict': ..., 'meta': ...}``.
        dst (str): Output path.
        src (str, optional): Source path (never overwritten).
        force (bool): Overwrite an existing ``dst``. Defaults to False.
        out_format (str, optional): ``'pytorch'``, ``'safetensors'`` or
            ``'pkl'`` (plain pickle, protocol 4, of numpy arrays and plain
            types, as detectron2 reads; only when asked for); defaults to
            the destination's extension (``.safetensors`` or pytorch).
        publish (bool): Append the first 8 hex digits of the file's sha256 to
            its name, as MMDetection's ``publish_model.py`` does.

    Returns:
        tuple[str, str | None]: The final path and, with ``publish``, the
        file's sha256 (computed while writing).

    Raises:
        OutputError: The destination is refused or the write failed (disk
            full, permissions); no partial file is left behind.
    """
    dst = os.fspath(dst)
    check_destination(dst, src, force)
    fmt = out_format or ('safetensors' if dst.endswith('.safetensors')
                         else 'pytorch')
    parent = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f'.{os.path.basename(dst)}.',
                               suffix='.part')
    try:
        # mkstemp creates 0600; give the file what open() would (0666 less
        # the umask), so a converted checkpoint is as readable as any other
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, 'wb') as raw:
            writer = _HashingWriter(raw) if publish else raw
            if fmt == 'safetensors':
                writer.write(_safetensors_bytes(obj))
            elif fmt == 'pkl':  # numpy arrays + plain types (detectron2)
                pickle.dump(obj, writer, protocol=4)
            elif publish:  # every byte through the hashing writer
                torch.save(obj, writer)
            else:  # by path: torch's own writer, no Python write() per record
                torch.save(obj, tmp)
            raw.flush()
            os.fsync(raw.fileno())
        sha = writer.sha256.hexdigest() if publish else None
        final = dst
        if publish:
            stem, ext = _split_ext(dst)
            final = f'{stem}-{sha[:8]}{ext}'
            check_destination(final, src, force)
        os.replace(tmp, final)
        _fsync_dir(parent)
        return final, sha
    except OSError as err:
        _remove(tmp)
        if err.errno == errno.ENOSPC:
            raise OutputError(f'{dst}: no space left on the device; free '
                              'space or write elsewhere') from None
        raise OutputError(f'{dst}: cannot write ({err.strerror or err}); '
                          'check the path and permissions') from None
    except BaseException:
        _remove(tmp)
        raise


def _umask() -> int:
    """The process's umask (read by setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _split_ext(path: str) -> Tuple[str, str]:
    """Split ``a/b.pth.tar`` into ``('a/b', '.pth.tar')``."""
    for ext in ('.pth.tar', '.pth', '.pt', '.pkl', '.safetensors', '.bin'):
        if path.endswith(ext):
            return path[:-len(ext)], ext
    return os.path.splitext(path)


def _remove(path: str) -> None:
    """Delete ``path`` if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str) -> None:
    """fsync a directory so a rename in it is durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
