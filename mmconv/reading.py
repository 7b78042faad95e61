# Copyright (c) mmconv contributors. All rights reserved.
"""Reading checkpoint files without running code from them.

PyTorch files go through ``torch.load(weights_only=True)`` with the
allowlist of :mod:`mmconv.allowlist` (or, before torch 2.6, through
:mod:`mmconv.torchzip`); ``.pkl`` files through
:class:`~mmconv.allowlist.RestrictedUnpickler`; ``.safetensors`` through
safetensors. Anything else needs an explicit ``unsafe=True``.
"""
import io
import json
import mmap
import os
import pickle
import re
import stat
import struct
import warnings
import zipfile
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch

from .allowlist import (RefusedValue, RestrictedUnpickler, admit_lazy,
                        allowed_global, safe_globals_context, standin_error)
from .containers import Assembled
from .errors import (InputError, MMConvError, UnsafeCheckpointError,
                     UsageError)
from .lazy import lazy_tensor
from .picklescan import (PickleRefused, ScanRules, scan_legacy_torch,
                         scan_pickle)

__all__ = ['load_file', 'TORCH_WEIGHTS_ONLY_IS_SAFE', 'arrays_to_tensors']


def _torch_version() -> Tuple[int, int]:
    """``(major, minor)`` of the running torch."""
    match = re.match(r'(\d+)\.(\d+)', torch.__version__)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


#: Whether ``torch.load(weights_only=True)`` is a safety boundary: not
#: before torch 2.6 (CVE-2025-32434), where mmconv reads torch files with
#: its own restricted reader (:mod:`mmconv.torchzip`) instead.
TORCH_WEIGHTS_ONLY_IS_SAFE = _torch_version() >= (2, 6)


def _check_source(path: str) -> None:
    """Raise :class:`InputError` unless ``path`` is a non-empty regular
    file (not a directory, device, FIFO or socket, which could block or
    never end)."""
    if not os.path.exists(path):
        raise InputError(f'{path}: no such file; check the path')
    if os.path.isdir(path):
        raise InputError(f'{path} is a directory; give the checkpoint file '
                         'inside it')
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise InputError(f'{path} is not a regular file (a device, pipe or '
                         'socket); give a checkpoint file')
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


def _corrupt(path: str, err: BaseException) -> InputError:
    """A one-line 'truncated or corrupt' error for ``path`` (or, for what
    exceeds :mod:`mmconv.picklescan`'s limits, which ones)."""
    if isinstance(err, MemoryError):
        return InputError(f'{path}: not enough memory to read it; free '
                          'memory or read it on a bigger machine')
    text = str(err)
    m = re.search(r'Unsupported operand \d+|[^\n]*truncated[^\n]*', text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    detail = m.group(0) if m else (lines[0] if lines else type(err).__name__)
    detail = detail.strip()[:160]
    if isinstance(err, ValueError) and re.search(r'\blimit\b', detail):
        return InputError(
            f'{path}: refused to read it: {detail}, which no real '
            'checkpoint needs; if you trust the file, --unsafe-load '
            '(unsafe_load=True) reads it without limits')
    return InputError(f'{path}: not a readable checkpoint, or truncated/'
                      f'corrupt ({detail}); download it again')


def _refusal(path: str, err: PickleRefused) -> UnsafeCheckpointError:
    """The one-line refusal of a file the pre-scan finds would change
    shared objects or attributes."""
    return UnsafeCheckpointError(
        f'{path}: refused to load: {str(err)[:200]}; if you trust the file, '
        'rerun with --unsafe-load (unsafe_load=True)')


#: What else than :class:`MMConvError` a reader may raise on a corrupt file
#: (RecursionError is a RuntimeError; struct.error and the rest are not
#: ValueErrors).
_READ_ERRORS = (RuntimeError, EOFError, ValueError, OSError, KeyError,
                AttributeError, TypeError, IndexError, ImportError,
                zipfile.BadZipFile, zipfile.LargeZipFile, struct.error,
                OverflowError, MemoryError, AssertionError)
#: Every failure a read maps to one line (:func:`_failure`).
_FAILURES = (PickleRefused, pickle.UnpicklingError) + _READ_ERRORS


def _failure(path: str, err: BaseException, retry_lazy: bool = False
             ) -> Optional[MMConvError]:
    """The one-line error for a failed read of ``path``: a pre-scan
    refusal, a global outside the allowlist (unsafe), else corrupt input.
    None with ``retry_lazy`` when the refused global is one mmconv admits
    once its module is imported (:func:`admit_lazy`): read again."""
    if isinstance(err, PickleRefused):
        return _refusal(path, err)
    refused = _refused_global(err) if isinstance(
        err, pickle.UnpicklingError) else None
    if refused and retry_lazy and admit_lazy(refused):
        return None
    if refused:
        return UnsafeCheckpointError(_unsafe_message(path, refused))
    return _corrupt(path, err)


def _pickle_rules() -> ScanRules:
    """The pre-scan rules of a ``.pkl``: what :class:`RestrictedUnpickler`
    resolves, no persistent ids."""
    unpickler = RestrictedUnpickler(io.BytesIO(b''))

    def resolve(module: str, name: str) -> Any:
        try:
            return unpickler.find_class(module, name)
        except (pickle.UnpicklingError, ImportError, AttributeError):
            return None
    return ScanRules(resolve)


def _prescan_torch(path: str, is_zip: bool) -> None:
    """Check a torch file before ``torch.load`` reads it, with the rules
    mmconv's own reader applies (:func:`mmconv.torchzip.check_torch_zip`;
    :func:`mmconv.picklescan.scan_legacy_torch` for the legacy format):
    torch's weights-only loader is more permissive (compressed or
    overlapping records, storages beyond their record, unbounded
    structures)."""
    from .torchzip import check_torch_zip, scan_rules
    if is_zip:
        check_torch_zip(path, allowed_global)
        return
    with open(path, 'rb') as f, \
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        scan_legacy_torch(data, scan_rules(allowed_global, pid_arity=6))


def arrays_to_tensors(obj: Any) -> Any:
    """Turn numpy arrays inside nested dicts into tensors (no copy where
    the array is native-endian and C-contiguous; an array of a dtype this
    torch has no tensor type for stays an array)."""
    if isinstance(obj, np.ndarray):
        if type(obj) is not np.ndarray:  # the allowlist's ndarray stand-in
            obj = obj.view(np.ndarray)
        if not obj.dtype.isnative:
            obj = obj.astype(obj.dtype.newbyteorder('='))
        if not obj.flags.c_contiguous:  # (0-d arrays always are)
            obj = np.ascontiguousarray(obj)
        try:
            return torch.from_numpy(obj)
        except TypeError:  # e.g. uint32 before torch 2.3
            return obj
    if isinstance(obj, dict):
        return type(obj)((k, arrays_to_tensors(v)) for k, v in obj.items())
    return obj


def _load_pickle(path: str, unsafe: bool) -> Any:
    """Load a ``.pkl`` with the restricted unpickler, after the pre-scan of
    :mod:`mmconv.picklescan` (both read one memory map of the file, so they
    see the same bytes); arrays -> tensors."""
    with open(path, 'rb') as f:
        try:
            if unsafe:
                return arrays_to_tensors(pickle.load(f, encoding='latin1'))
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                scan_pickle(data, _pickle_rules())
                loaded = RestrictedUnpickler(data, encoding='latin1').load()
            return arrays_to_tensors(loaded)
        except _FAILURES as err:
            raise _failure(path, err) from None


#: safetensors' dtype names (``get_slice(...).get_dtype()``).
_SAFETENSORS_DTYPES = {
    'F64': 'float64', 'F32': 'float32', 'F16': 'float16',
    'BF16': 'bfloat16', 'I64': 'int64', 'I32': 'int32', 'I16': 'int16',
    'I8': 'int8', 'U8': 'uint8', 'BOOL': 'bool', 'U16': 'uint16',
    'U32': 'uint32', 'U64': 'uint64', 'F8_E4M3': 'float8_e4m3fn',
    'F8_E5M2': 'float8_e5m2'}


def _safetensors_tensor(path: str, key: str) -> torch.Tensor:
    """One tensor of a ``.safetensors`` file, the file opened for it alone
    (the mapping goes with the tensor, so a streaming conversion holds only
    the pages of the tensors it is writing)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework='pt', device='cpu') as f:
            return f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as err:
        raise _corrupt(path, err) from None


def _load_safetensors(path: str, lazy: bool = False) -> Assembled:
    """Load a ``.safetensors`` file as ``{'state_dict': ..., 'meta': ...}``
    (the tensors memory-mapped, or, ``lazy``, lazy tensors each read
    when written; ``meta``: the header's metadata)."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise UsageError(f'{path}: reading .safetensors needs the '
                         "safetensors package; pip install "
                         "'mmconv[safetensors]'") from None
    try:
        with safe_open(path, framework='pt', device='cpu') as f:
            meta = f.metadata() or {}
            if lazy:
                tensors = {k: _lazy_safetensors(path, k, f.get_slice(k))
                           for k in f.keys()}
            else:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise _corrupt(path, err) from None
    return Assembled(state_dict=tensors,
                     meta={k: _from_json(v) for k, v in meta.items()})


def _lazy_safetensors(path: str, key: str, found: Any) -> torch.Tensor:
    """A lazy tensor for ``key`` of ``path`` (``found``: its slice)."""
    name = _SAFETENSORS_DTYPES.get(found.get_dtype())
    dtype = getattr(torch, name, None) if name else None
    if dtype is None:
        raise ValueError(f'tensor {key!r} has the dtype '
                         f'{found.get_dtype()}, which this torch lacks')
    return lazy_tensor(found.get_shape(), dtype,
                       lambda: _safetensors_tensor(path, key))


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
              reader: str = 'auto', lazy: bool = False) -> Any:
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
        lazy (bool): Give the tensors of ``.safetensors`` and zip-format
            PyTorch files as lazy tensors (:mod:`mmconv.lazy`), read when
            written.

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
        return _load_safetensors(path, lazy)
    if path.endswith(('.pkl', '.pickle')):
        return _load_pickle(path, unsafe)
    is_zip = zipfile.is_zipfile(path)
    if reader == 'auto':
        reader = 'torch' if TORCH_WEIGHTS_ONLY_IS_SAFE else 'mmconv'
    while True:
        try:
            if unsafe:
                return _torch_load(path, unsafe, mmap and is_zip)
            if not is_zip:  # both readers: a broken one is corrupt
                _check_legacy(path, reader)
                return _torch_load(path, unsafe, False)
            if reader == 'mmconv':
                from .torchzip import load_torch_zip
                return load_torch_zip(path, allowed_global, lazy=lazy)
            _prescan_torch(path, is_zip)
            loaded = _torch_load(path, unsafe, mmap)
            return _lazy_torch_zip(path, loaded) if lazy else loaded
        except _FAILURES as err:
            failure = _failure(path, err, retry_lazy=True)
            if failure is None:
                continue  # e.g. HistoryBuffer: import MMEngine, retry
            raise failure from None


def _lazy_torch_zip(path: str, loaded: Any) -> Any:
    """What torch loaded from the zip ``path``, with lazy tensors: the
    same objects from mmconv's reader (:mod:`mmconv.torchzip`), each
    storage read when it is written; ``loaded`` itself (memory-mapped)
    where that reader refuses the file."""
    from .torchzip import load_torch_zip
    try:
        return load_torch_zip(path, allowed_global, lazy=True)
    except _FAILURES + (MMConvError, ):
        return loaded


def _check_legacy(path: str, reader: str) -> None:
    """A file that is not a zip: refused unless it is a legacy torch file
    the pre-scan admits, and (exit 4) on mmconv's reader, which does not
    read that format."""
    with open(path, 'rb') as f:
        head = f.read(4)
    if head[:2] == b'PK':
        raise ValueError('zip archive is truncated: its central directory '
                         'is missing')
    if head[:1] != b'\x80':  # not a pickle: not a legacy torch file
        raise ValueError('not a torch.save file')
    _prescan_torch(path, False)
    if reader == 'mmconv':
        raise UnsafeCheckpointError(
            f'{path}: legacy (non-zip) torch file: on torch '
            f'{torch.__version__} (< 2.6, whose weights_only loader is not '
            'safe) mmconv reads only the zip format torch>=1.6 writes; '
            're-save it with torch.save, upgrade torch, or rerun with '
            '--unsafe-load if you trust it')


def _torch_load(path: str, unsafe: bool, mmap: bool) -> Any:
    """``torch.load`` to CPU, weights-only with the allowlist unless
    ``unsafe``."""
    if unsafe:
        return torch.load(path, map_location='cpu', weights_only=False,
                          mmap=mmap)
    try:
        with safe_globals_context():
            return torch.load(path, map_location='cpu', weights_only=True,
                              mmap=mmap)
    except pickle.UnpicklingError as err:
        found = standin_error(err)  # torch re-raises it with a long text
        if found is not None:
            raise found from None
        raise
    except LookupError as err:  # torch's own _codecs.encode
        if type(err) is not LookupError:  # KeyError, IndexError
            raise
        raise RefusedValue('_codecs.encode',
                           f'an unknown encoding ({str(err)[:60]})') from None
