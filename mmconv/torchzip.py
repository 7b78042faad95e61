# Copyright (c) mmconv contributors. All rights reserved.
"""mmconv's own restricted reader of the ``torch.save`` zip format.

Used where ``torch.load(weights_only=True)`` is not a safety boundary
(torch < 2.6, CVE-2025-32434), and on request (``reader='mmconv'``) to
compare the two. It never calls ``torch.load``:

* the zip is opened with :mod:`zipfile` only to find the records
  (``<archive>/data.pkl``, ``<archive>/data/<key>``, ``byteorder``); torch
  writes them uncompressed and 64-byte aligned, so each storage is a slice
  of one private (copy-on-write) memory map of the file, its own storage
  object, exactly as ``torch.load(mmap=True)`` makes them: only the tensors
  that are used are read from disk, and saving one writes only its record;
* ``data.pkl`` is unpickled by a :class:`pickle.Unpickler` whose
  ``find_class`` resolves exact ``(module, name)`` pairs only: torch's tensor
  rebuild functions (replaced by validating equivalents here), the storage
  classes and dtypes, ``torch.Size``, ``collections.OrderedDict`` and the
  allowlist of :mod:`mmconv.io` (numpy arrays/scalars,
  ``argparse.Namespace``, MMEngine's ``HistoryBuffer``); anything else is
  refused as ``Unsupported global: GLOBAL module.name``, like torch does;
* every tensor is checked to lie inside its own record (a crafted file can
  neither run code nor read past its storage).

The legacy (pre-1.6, non-zip) format is not read here.
"""
import _compat_pickle
import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

import torch

__all__ = ['load_torch_zip', 'StorageRecord']

#: ``torch.<Name>Storage`` (legacy typed storages, how torch.save names a
#: storage's type) -> dtype.
_STORAGE_DTYPES = {
    'DoubleStorage': torch.float64, 'FloatStorage': torch.float32,
    'HalfStorage': torch.float16, 'BFloat16Storage': torch.bfloat16,
    'LongStorage': torch.int64, 'IntStorage': torch.int32,
    'ShortStorage': torch.int16, 'CharStorage': torch.int8,
    'ByteStorage': torch.uint8, 'BoolStorage': torch.bool,
    'ComplexDoubleStorage': torch.complex128,
    'ComplexFloatStorage': torch.complex64, 'UntypedStorage': torch.uint8,
}
#: ``torch.<name>`` dtypes a pickle may name (``_rebuild_tensor_v3``).
_DTYPES = {name: getattr(torch, name) for name in dir(torch)
           if isinstance(getattr(torch, name, None), torch.dtype)}


class _StorageType:
    """What ``GLOBAL torch.FloatStorage`` resolves to: only its dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class StorageRecord:
    """One storage of the file: its dtype and its bytes (an
    ``UntypedStorage`` slice of the memory map)."""

    __slots__ = ('dtype', 'data')

    def __init__(self, dtype: torch.dtype,
                 data: torch.UntypedStorage) -> None:
        self.dtype, self.data = dtype, data

    @property
    def numel(self) -> int:
        """Elements of ``dtype`` the record holds."""
        return self.data.nbytes() // _itemsize(self.dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(
        isinstance(v, int) and v >= 0 for v in value)


def _rebuild(storage: Any, offset: Any, size: Any, stride: Any,
             dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A tensor viewing ``storage``, after checking every argument (types,
    and that the view stays inside the storage's own record)."""
    if not isinstance(storage, StorageRecord) or not isinstance(offset, int) \
            or offset < 0 or not _is_int_tuple(tuple(size)) \
            or not _is_int_tuple(tuple(stride)) or len(size) != len(stride):
        raise pickle.UnpicklingError('malformed tensor record')
    size, stride = tuple(size), tuple(stride)
    if dtype is not None and dtype != storage.dtype:
        raise pickle.UnpicklingError('tensor dtype differs from its storage')
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if any(n == 0 for n in size):
        extent = 0
    if extent > storage.numel:
        raise pickle.UnpicklingError(
            f'tensor record reaches element {extent} of a storage of '
            f'{storage.numel}')
    tensor = torch.empty((0, ), dtype=storage.dtype)
    return tensor.set_(storage.data, offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride,
                       requires_grad=False, backward_hooks=None,
                       metadata=None) -> torch.Tensor:
    """Stands in for ``torch._utils._rebuild_tensor_v2`` (hooks and
    metadata are not applied: they hold no weights)."""
    return _rebuild(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride,
                       requires_grad, backward_hooks, dtype,
                       metadata=None) -> torch.Tensor:
    """Stands in for ``torch._utils._rebuild_tensor_v3``."""
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError('malformed tensor record')
    return _rebuild(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None,
                       state=None) -> torch.Tensor:
    """Stands in for ``torch._utils._rebuild_parameter[_with_state]``:
    the weights of a parameter, as a plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError('malformed parameter record')
    return data


#: ``(module, name)`` of torch's own pickle globals -> safe equivalent.
_TORCH_GLOBALS: Dict[Tuple[str, str], Any] = {
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('torch', 'Size'): torch.Size,
    ('collections', 'OrderedDict'): OrderedDict,
}


def _records(path: str, mapped: torch.UntypedStorage
             ) -> Tuple[str, Dict[str, Any]]:
    """``(archive prefix, {record name: storage slice})`` of a torch zip."""
    out = {}
    with zipfile.ZipFile(path) as zf, open(path, 'rb') as f:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f'record {info.filename} is compressed: '
                                 'not written by torch.save')
            f.seek(info.header_offset)
            header = f.read(30)
            if len(header) != 30 or header[:4] != b'PK\x03\x04':
                raise ValueError('bad zip local header')
            name_len, extra_len = struct.unpack('<HH', header[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            if start + info.file_size > mapped.nbytes():
                raise ValueError(f'record {info.filename} is truncated')
            out[info.filename] = mapped[start:start + info.file_size]
    pickles = [n for n in out if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pickles) != 1:
        raise ValueError('no data.pkl record: not a torch.save file')
    return pickles[0][:-len('data.pkl')], out


class _Unpickler(pickle.Unpickler):
    """``data.pkl`` of a torch zip with an exact allowlist."""

    def __init__(self, file, records: Dict[str, torch.Tensor], prefix: str,
                 allowed: Callable[[str, str], Any]) -> None:
        super().__init__(file, encoding='utf-8')
        self._records, self._prefix = records, prefix
        self._allowed = allowed
        self._storages: Dict[str, StorageRecord] = {}

    def find_class(self, module: str, name: str) -> Any:
        """Resolve exact allowlisted names only."""
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[(module, name)]
        if module == 'torch' and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == 'torch' and name in _DTYPES:
            return _DTYPES[name]
        found = self._allowed(module, name)
        if found is not None:
            return found
        raise pickle.UnpicklingError(
            f'Unsupported global: GLOBAL {module}.{name}')

    def persistent_load(self, pid: Any) -> StorageRecord:
        """``('storage', type, key, location, numel)`` -> the record."""
        if not (isinstance(pid, tuple) and len(pid) == 5
                and pid[0] == 'storage' and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f'unsupported persistent id {pid!r}')
        _, kind, key, _, numel = pid
        if key not in self._storages:
            data = self._records.get(f'{self._prefix}data/{key}')
            nbytes = numel * _itemsize(kind.dtype)
            if data is None or data.nbytes() < nbytes:
                raise pickle.UnpicklingError(f'storage {key} is missing or '
                                             'truncated')
            data = data[:nbytes] if data.nbytes() > nbytes else data
            if data.data_ptr() % _itemsize(kind.dtype):
                data = data.clone()  # not 64-byte aligned (not torch.save's)
            self._storages[key] = StorageRecord(kind.dtype, data)
        return self._storages[key]


def _bytes(storage: torch.UntypedStorage) -> bytes:
    """The bytes of a (small) storage slice."""
    return bytes(torch.empty((0, ), dtype=torch.uint8).set_(
        storage, 0, (storage.nbytes(), ), (1, )).numpy())


def load_torch_zip(path: str, allowed: Callable[[str, str], Any]) -> Any:
    """Load a ``torch.save`` zip file without ``torch.load``.

    Args:
        path (str): The file (zip format, as torch>=1.6 writes).
        allowed (callable): ``allowed(module, name)`` -> the object a global
            stands for, or None to refuse it.

    Returns:
        The saved object; tensors are CPU views of a private memory map of
        the file (writing to them never changes the file).

    Raises:
        pickle.UnpicklingError: A refused global (``Unsupported global:
            GLOBAL module.name``) or a malformed record.
        ValueError / zipfile.BadZipFile: Not a readable torch zip.
    """
    # shared=False: a private (copy-on-write) mapping, as torch.load's mmap
    mapped = torch.UntypedStorage.from_file(os.fspath(path), False,
                                            os.path.getsize(path))
    prefix, records = _records(path, mapped)
    order = records.get(f'{prefix}byteorder')
    if order is not None and _bytes(order) not in (b'little', ):
        raise ValueError('big-endian torch file: not supported')
    pkl = _bytes(records[f'{prefix}data.pkl'])
    return _Unpickler(io.BytesIO(pkl), records, prefix, allowed).load()
