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
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .errors import InputError, OutputError, UnsafeCheckpointError

__all__ = ['load_file', 'save_file', 'SAFE_GLOBALS', 'RestrictedUnpickler',
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
#: own statistics functions through ``getattr``).
def exclude_bias_and_norm(param: Any) -> bool:
    """Inert stand-in for VICReg's training-script function of this name.

    VICReg's optimizer param groups hold a reference to the function
    ``exclude_bias_and_norm`` of its training script, so its checkpoints
    name ``__main__.exclude_bias_and_norm`` (or ``main_vicreg.…``). The
    reference is only stored, never called, when converting; it resolves to
    this function instead of importing anything.
    """
    return param.ndim == 1


SAFE_GLOBALS: List[Any] = [argparse.Namespace] + _numpy_globals() + [
    (exclude_bias_and_norm, f'{module}.exclude_bias_and_norm')
    for module in ('__main__', 'main_vicreg')
]

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


def safe_globals_context() -> torch.serialization.safe_globals:
    """Context admitting :data:`SAFE_GLOBALS` in ``torch.load``.

    Only globals not already allowed process-wide are added (torch removes
    what the context added on exit, so re-adding registered ones would
    unregister them).
    """
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
    return {'state_dict': tensors, 'meta': dict(meta)}


def load_file(path: str, *, unsafe: bool = False, mmap: bool = True,
              warn: Callable[[str], None] = None) -> Any:
    """Load a checkpoint file without running code from it.

    Args:
        path (str): ``.pth``/``.pth.tar``/``.pt``/``.pkl``/``.safetensors``.
        unsafe (bool): Allow arbitrary pickled objects (runs code from the
            file; only for files you trust). Defaults to False.
        mmap (bool): Memory-map zip-format PyTorch files so only the tensors
            that are used are read. Defaults to True.
        warn (callable, optional): Receives the warning printed for
            ``unsafe=True``. Defaults to :func:`warnings.warn`.

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
    while True:
        try:
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
        with os.fdopen(fd, 'wb') as raw:
            writer = _HashingWriter(raw) if publish else raw
            if fmt == 'safetensors':
                writer.write(_safetensors_bytes(obj))
            elif fmt == 'pkl':  # numpy arrays + plain types (detectron2)
                pickle.dump(obj, writer, protocol=4)
            else:
                torch.save(obj, writer)
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
