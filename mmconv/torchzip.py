# Copyright (c) mmconv contributors. All rights reserved.
"""mmconv's own restricted reader of the ``torch.save`` zip format, used where
``torch.load(weights_only=True)`` is not a safety boundary (torch < 2.6,
CVE-2025-32434) or on request (``reader='mmconv'``), and the zip check
(:func:`check_torch_zip`) both paths run (README "Safety").
"""
import io
import os
import pickle
import struct
import zipfile
from collections import Counter, OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from .allowlist import python3_name
from .errors import InputError
from .lazy import lazy_tensor
from .picklescan import (MAX_BROADCAST, PickleRefused, PickleRejected,
                         Scan, ScanRules, scan_pickle)

__all__ = ['load_torch_zip', 'check_torch_zip', 'StorageRecord',
           'MAX_DATA_PKL', 'MAX_RECORDS']

#: Bytes of ``data.pkl`` (real checkpoints: kilobytes to a few megabytes).
MAX_DATA_PKL = 1 << 30
#: Records of one zip (one per storage, and a few more).
MAX_RECORDS = 1 << 20
#: Bytes of the other small records (``byteorder``, ``version``, ...).
_MAX_SMALL_RECORD = 1 << 16
_MAX_INDEX = 1 << 62

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


class _LazyRecord:
    """A record of the file read only when a tensor viewing it is
    (:mod:`mmconv.lazy`): where its bytes are."""

    __slots__ = ('path', 'start', 'length')

    def __init__(self, path: str, start: int, length: int) -> None:
        self.path, self.start, self.length = path, start, length

    def nbytes(self) -> int:
        return self.length

    def read(self) -> torch.UntypedStorage:
        """The record's bytes, in memory of their own."""
        data = torch.empty(self.length, dtype=torch.uint8)
        try:
            with open(self.path, 'rb') as f:
                f.seek(self.start)
                done = f.readinto(memoryview(data.numpy())) \
                    if self.length else 0
        except OSError as err:
            raise InputError(f'{self.path}: cannot read it any more '
                             f'({err.strerror or err}); it was moved or '
                             'removed while converting: convert again'
                             ) from None
        if done != self.length:
            raise InputError(f'{self.path}: it changed while converting '
                             '(a record ends early); convert again')
        return data.untyped_storage()


class StorageRecord:
    """One storage of the file: its dtype and its bytes (an
    ``UntypedStorage`` slice of the memory map, or a :class:`_LazyRecord`).
    """

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
    if any(v >= _MAX_INDEX for v in (offset, *size, *stride)):
        raise pickle.UnpicklingError('malformed tensor record')
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if any(n == 0 for n in size):
        extent = 0
    if extent > storage.numel:
        raise pickle.UnpicklingError(
            f'tensor record reaches element {extent} of a storage of '
            f'{storage.numel}')
    numel = 1
    for n in size:
        numel *= n
    if numel > max(storage.numel, MAX_BROADCAST):
        raise pickle.UnpicklingError(
            f'tensor of {numel} elements views a storage of {storage.numel}')
    if isinstance(storage.data, _LazyRecord):
        record, dtype = storage.data, storage.dtype
        return lazy_tensor(size, dtype, lambda: torch.empty(
            (0, ), dtype=dtype).set_(record.read(), offset, size, stride))
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
    the weights of a parameter, as a plain tensor (a state that would set
    attributes on it is refused)."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError('malformed parameter record')
    if state and (not isinstance(state, tuple) or any(state)):
        raise PickleRefused('it sets attributes on a Parameter (its '
                            'pickled state)')
    return data


#: ``(module, name)`` of torch's own pickle globals -> safe equivalent.
_TORCH_GLOBALS: Dict[Tuple[str, str], Any] = {
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('torch', 'Size'): torch.Size,
    ('collections', 'OrderedDict'): OrderedDict,
    # on torch's own weights-only allowlist; found in training ``args``
    ('collections', 'Counter'): Counter,
    ('torch', 'device'): torch.device,
}


def _zip_directory(path: str) -> Tuple[str, Dict[str, Tuple[int, int]]]:
    """``(archive prefix, {record name: (data offset, size)})`` of a torch
    zip whose directory is consistent, as both torch's reader (miniz) and
    this one would read it: every record stored (not compressed), its local
    header naming it with the central directory's name and sizes, records
    inside the file before the central directory and not overlapping,
    names unique (also ignoring case, as miniz looks them up), all in one
    folder holding exactly one ``data.pkl``."""
    size = os.path.getsize(path)
    spans, out, seen = [], {}, set()
    with open(path, 'rb') as f:
        end = zipfile._EndRecData(f)  # what the directory declares
        if end is not None and end[zipfile._ECD_ENTRIES_TOTAL] > MAX_RECORDS:
            raise ValueError(f'zip of {end[zipfile._ECD_ENTRIES_TOTAL]} '
                             f'records (limit {MAX_RECORDS})')
    with open(path, 'rb') as f, zipfile.ZipFile(f) as zf:
        if end is None or zf.start_dir != end[zipfile._ECD_OFFSET] or \
                len(zf.infolist()) != end[zipfile._ECD_ENTRIES_TOTAL]:
            raise ValueError('zip central directory is inconsistent')
        for info in zf.infolist():
            name = info.orig_filename
            if name.lower() in seen:
                raise ValueError(f'zip record {name[:60]} appears twice')
            seen.add(name.lower())
            if info.compress_type != zipfile.ZIP_STORED or \
                    info.compress_size != info.file_size:
                raise ValueError(f'record {name[:60]} is compressed: not '
                                 'written by torch.save')
            if info.flag_bits & 0x41:
                raise ValueError(f'record {name[:60]} is encrypted')
            start, stop = _local_record(f, info, size)
            spans.append((info.header_offset, stop, name))
            out[name] = (start, info.file_size)
        spans.sort()
        for (_, stop, a), (begin, _, b) in zip(spans, spans[1:]):
            if begin < stop:
                raise ValueError(f'zip records {a[:40]} and {b[:40]} '
                                 'overlap')
        if spans and spans[-1][1] > zf.start_dir:
            raise ValueError('zip record runs into the central directory')
    pickles = [n for n in out if n.rsplit('/', 1)[-1] == 'data.pkl']
    if len(pickles) != 1:
        raise ValueError('not a torch.save file: no single data.pkl record')
    prefix = pickles[0][:-len('data.pkl')]
    if prefix.count('/') != 1 or not prefix[:-1] or \
            not all(n.startswith(prefix) for n in out):
        raise ValueError('not a torch.save file: its records are not in '
                         'one folder')
    for name, (_, length) in out.items():
        limit = MAX_DATA_PKL if name == pickles[0] else (
            None if name.startswith(f'{prefix}data/') else _MAX_SMALL_RECORD)
        if limit is not None and length > limit:
            raise ValueError(f'record {name[:60]} of {length} bytes (limit '
                             f'{limit})')
    return prefix, out


def _local_record(f: Any, info: zipfile.ZipInfo, size: int
                  ) -> Tuple[int, int]:
    """``(data offset, end of the record)`` of one zip entry, after
    checking its local header (and data descriptor) against the central
    directory."""
    name = info.orig_filename
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b'PK\x03\x04':
        raise ValueError(f'zip directory points {name[:60]} at no local '
                         'header (truncated?)')
    (flags, method, crc, csize, usize, name_len,
     extra_len) = struct.unpack('<2xHH4xIIIHH', header[4:30])
    raw_name = f.read(name_len)
    extra = f.read(extra_len)
    encoding = 'utf-8' if info.flag_bits & 0x800 else 'cp437'
    if raw_name != name.encode(encoding, 'replace') or method != 0 or \
            (flags & 0x8) != (info.flag_bits & 0x8):
        raise ValueError(f'zip local header of {name[:60]} disagrees with '
                         'the central directory')
    start = info.header_offset + 30 + name_len + extra_len
    stop = start + info.file_size
    if stop > size:
        raise ValueError(f'record {name[:60]} is truncated')
    if flags & 0x8:  # sizes in a data descriptor after the data
        f.seek(stop)
        desc = f.read(24)
        if desc[:4] == b'PK\x07\x08':
            desc = desc[4:]
            stop += 4
        small = struct.unpack('<III', desc[:12]) if len(desc) >= 12 \
            else None
        large = struct.unpack('<IQQ', desc[:20]) if len(desc) >= 20 \
            else None
        want = (info.CRC, info.file_size, info.file_size)
        if small == want:
            stop += 12
        elif large == want:
            stop += 20
        else:
            raise ValueError(f'zip data descriptor of {name[:60]} '
                             'disagrees with the central directory')
        return start, stop
    if (csize, usize) == (0xFFFFFFFF, 0xFFFFFFFF):  # zip64 extra field
        csize = usize = None
        while len(extra) >= 4:
            tag, length = struct.unpack('<HH', extra[:4])
            if tag == 1 and length >= 16:
                usize, csize = struct.unpack('<QQ', extra[4:20])
            extra = extra[4 + length:]
    if (crc, csize, usize) != (info.CRC, info.file_size, info.file_size):
        raise ValueError(f'zip local header of {name[:60]} disagrees with '
                         'the central directory')
    return start, stop


def _resolver(allowed: Callable[[str, str], Any]
              ) -> Callable[[str, str], Any]:
    """``resolve(module, name)`` as :class:`_Unpickler` resolves globals,
    or None where it refuses them."""
    unpickler = _Unpickler(io.BytesIO(b''), {}, '', allowed)

    def resolve(module: str, name: str) -> Any:
        try:
            return unpickler.find_class(module, name)
        except (pickle.UnpicklingError, ImportError, AttributeError):
            return None
    return resolve


def _storage_itemsize(obj: Any) -> Optional[int]:
    """Bytes per element of a pickled storage type (``torch.FloatStorage``
    resolves to a :class:`_StorageType`)."""
    if not isinstance(obj, _StorageType):
        return None
    if obj.dtype not in _ITEMSIZES:
        _ITEMSIZES[obj.dtype] = _itemsize(obj.dtype)
    return _ITEMSIZES[obj.dtype]


_ITEMSIZES: Dict[torch.dtype, int] = {}


def scan_rules(allowed: Callable[[str, str], Any],
               pid_arity: int = 5) -> ScanRules:
    """What :mod:`mmconv.picklescan` admits in a torch file's pickle: the
    globals this reader resolves, torch's storage persistent ids."""
    return ScanRules(_resolver(allowed), pid_arity, _storage_itemsize)


def check_torch_zip(path: str, allowed: Callable[[str, str], Any]
                    ) -> Tuple[str, Dict[str, Tuple[int, int]], Scan]:
    """Check a torch zip before any unpickler reads it (this reader, or
    ``torch.load``, which is more permissive): a consistent zip directory
    (:func:`_zip_directory`), a ``data.pkl`` :func:`~mmconv.picklescan.
    scan_pickle` admits, and every storage it names in a record of exactly
    ``numel`` x element size bytes.

    Returns:
        ``(archive prefix, {record name: (data offset, size)}, what the
        scan of data.pkl found)``.

    Raises:
        ValueError / zipfile.BadZipFile: Inconsistent or corrupt zip
            (:class:`~mmconv.picklescan.PickleRejected` for the pickle).
        PickleRefused / pickle.UnpicklingError: What the scan refuses.
    """
    prefix, table = _zip_directory(path)
    start, length = table[f'{prefix}data.pkl']
    with open(path, 'rb') as f:
        f.seek(start)
        pkl = f.read(length)
    scan = scan_pickle(pkl, scan_rules(allowed))
    for key, ref in scan.storages.items():
        record = table.get(f'{prefix}data/{key}')
        nbytes = ref.numel * ref.itemsize
        if record is None:
            raise PickleRejected(f'storage {key[:20]} has no record')
        if record[1] != nbytes:
            raise PickleRejected(
                f'storage {key[:20]} declares {ref.numel} x {ref.itemsize} '
                f'bytes ({ref.type_name}), its record holds {record[1]}')
    return prefix, table, scan


def _records(path: str, mapped: torch.UntypedStorage,
             table: Dict[str, Tuple[int, int]]) -> Dict[str, Any]:
    """``{record name: storage slice}`` of a checked torch zip."""
    if mapped.nbytes() != os.path.getsize(path):
        raise ValueError('file changed while reading it')
    return {name: mapped[start:start + length]
            for name, (start, length) in table.items()}


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
        module, name = python3_name(module, name)
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
        if not (type(pid) is tuple and len(pid) == 5
                and pid[0] == 'storage' and isinstance(pid[1], _StorageType)
                and type(pid[2]) is str and type(pid[4]) is int
                and pid[4] >= 0):
            raise pickle.UnpicklingError('unsupported persistent id')
        _, kind, key, _, numel = pid
        if key not in self._storages:
            data = self._records.get(f'{self._prefix}data/{key}')
            nbytes = numel * _itemsize(kind.dtype)
            if data is None or data.nbytes() != nbytes:
                raise pickle.UnpicklingError(f'storage {key[:20]} is missing '
                                             'or truncated')
            if not isinstance(data, _LazyRecord) and \
                    data.data_ptr() % _itemsize(kind.dtype):
                data = data.clone()  # not 64-byte aligned (not torch.save's)
            self._storages[key] = StorageRecord(kind.dtype, data)
        return self._storages[key]


def _bytes(storage: Any) -> bytes:
    """The bytes of a (small) storage slice or lazy record."""
    if isinstance(storage, _LazyRecord):
        storage = storage.read()
    return bytes(torch.empty((0, ), dtype=torch.uint8).set_(
        storage, 0, (storage.nbytes(), ), (1, )).numpy())


def load_torch_zip(path: str, allowed: Callable[[str, str], Any],
                   lazy: bool = False) -> Any:
    """Load a ``torch.save`` zip file without ``torch.load``.

    Args:
        path (str): The file (zip format, as torch>=1.6 writes).
        allowed (callable): ``allowed(module, name)`` -> the object a global
            stands for, or None to refuse it.
        lazy (bool): Give lazy tensors (:mod:`mmconv.lazy`), each reading
            its record when it is read, into memory of its own.

    Returns:
        The saved object; tensors are CPU views of a private memory map of
        the file (writing to them never changes the file), or lazy.

    Raises:
        pickle.UnpicklingError: A refused global (``Unsupported global:
            GLOBAL module.name``) or a malformed record.
        ValueError / zipfile.BadZipFile: Not a readable torch zip (a
            :class:`~mmconv.picklescan.PickleRejected` for what the pre-scan
            of ``data.pkl`` rejects).
        PickleRefused: ``data.pkl`` would change shared objects.
    """
    path = os.fspath(path)
    prefix, table, _ = check_torch_zip(path, allowed)
    if lazy:
        records: Dict[str, Any] = {
            name: _LazyRecord(path, start, length)
            for name, (start, length) in table.items()}
    else:
        # shared=False: a private (copy-on-write) mapping, as torch.load's
        # mmap
        mapped = torch.UntypedStorage.from_file(path, False,
                                                os.path.getsize(path))
        records = _records(path, mapped, table)
    order = records.get(f'{prefix}byteorder')
    if order is not None and _bytes(order) not in (b'little', ):
        raise ValueError('big-endian torch file: not supported')
    pkl = _bytes(records[f'{prefix}data.pkl'])
    return _Unpickler(io.BytesIO(pkl), records, prefix, allowed).load()
