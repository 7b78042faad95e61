# Copyright (c) mmconv contributors. All rights reserved.
"""Atomic, no-replace writing of converted checkpoints (README "Errors": a
temporary file, then one no-replace link, or a rename with ``force``; any OS
error is an :class:`~mmconv.errors.OutputError` and leaves nothing behind).
"""
import ctypes
import errno
import hashlib
import io
import json
import os
import pickle
import re
import stat
import sys
import tempfile
from typing import Any, Dict, Optional, Tuple

import torch

from .errors import OutputError
from .lazy import has_lazy, load, materialize

__all__ = ['save_file', 'check_destination', 'stream_save']

#: ``os.link`` errors meaning "this file system has no hard links"
_NO_HARD_LINKS = frozenset(
    getattr(errno, name) for name in
    ('EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EMLINK', 'ENOSYS')
    if hasattr(errno, name))

#: ``renameat2`` errors meaning "RENAME_NOREPLACE is not supported here"
_NO_RENAMEAT2 = frozenset(
    getattr(errno, name) for name in
    ('EINVAL', 'ENOSYS', 'ENOTSUP', 'EOPNOTSUPP') if hasattr(errno, name))

#: torch's C++ writer reports a failed write as a RuntimeError
_TORCH_WRITE_FAILED = re.compile(
    r'inline_container|PytorchStreamWriter|unexpected pos|'
    r'file write failed|open file failed')

#: bytes appended to the temporary file to learn why torch's writer failed
_PROBE_BYTES = 1 << 20

_KINDS = ((stat.S_ISDIR, 'a directory'), (stat.S_ISFIFO, 'a FIFO'),
          (stat.S_ISCHR, 'a character device'),
          (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'))


def check_destination(dst: str, src: Optional[str] = None,
                      force: bool = False, *, probe: bool = True) -> None:
    """Refuse destinations that must not or cannot be written.

    A DST that is a symbolic link counts as existing (``force`` replaces
    the link itself, never its target); anything else that is not a
    regular file (FIFO, device, socket) is refused even with ``force``.

    Args:
        dst (str): Output path.
        src (str, optional): Source path; writing over it is refused.
        force (bool): Allow overwriting an existing ``dst``.
        probe (bool): Create and remove a temporary file next to ``dst``,
            so a directory that cannot hold it (``/proc``, ``/sys``, no
            permission, a read-only or full file system) is refused before
            converting.

    Raises:
        OutputError: ``dst`` is the source, a directory or another
            non-regular file, already exists without ``force``, its name
            is too long, or its directory is missing or (``probe``) cannot
            hold a new file.
    """
    dst = os.fspath(dst)
    parent = os.path.dirname(os.path.abspath(dst))
    try:
        _check_existing(dst, src, force)
        if not os.path.isdir(parent):
            raise OutputError(f'{dst}: directory {parent} does not exist; '
                              'create it first')
        name_max = _name_max(parent)
        if len(os.fsencode(os.path.basename(dst))) > name_max:
            raise OutputError(f'{dst}: file name too long (over '
                              f'{name_max} bytes); choose a shorter name')
        if probe:  # the OS's own answer (EROFS, EACCES, ENOSPC, ...)
            fd, tmp = _create_temp(dst, parent)
            os.close(fd)
            os.unlink(tmp)
    except OSError as err:
        raise _output_error(dst, err) from None


def _check_existing(dst: str, src: Optional[str], force: bool) -> None:
    """Refuse an existing ``dst`` that must not be replaced."""
    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        return
    if src is not None and os.path.exists(src) and os.path.exists(dst) \
            and os.path.samefile(src, dst):
        raise OutputError(f'{dst} is the source file itself; write the '
                          'converted checkpoint to another path')
    if os.path.isdir(dst):  # a directory, or a link to one
        raise OutputError(f'{dst} is a directory; give a file name such as '
                          f'{os.path.join(dst, "converted.pth")}')
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
        kind = next((k for test, k in _KINDS if test(st.st_mode)),
                    'a special file')
        raise OutputError(f'{dst} is {kind}, not a regular file; mmconv '
                          'never replaces it (not even with --force); '
                          'give a file path')
    if not force:
        what = 'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'a file'
        raise OutputError(f'{dst} already exists ({what}); pass --force to '
                          'overwrite it')


class _HashingWriter(io.RawIOBase):
    """File wrapper computing sha256 of everything written through it.

    The first OS error of the underlying file is kept in ``error``: torch's
    writer may report it as a RuntimeError without the errno.
    """

    def __init__(self, raw) -> None:
        self.raw, self.sha256 = raw, hashlib.sha256()
        self.error: Optional[OSError] = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        try:
            return self.raw.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

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
    """Write a checkpoint atomically, replacing nothing without ``force``.

    Args:
        obj (dict): ``{'state_dict': ..., 'meta': ...}``.
        dst (str): Output path.
        src (str, optional): Source path (never overwritten).
        force (bool): Overwrite an existing regular file (or symbolic link,
            replaced itself) at ``dst``; with several writers the last
            rename wins. Without it, a ``dst`` that appears while writing
            is kept and the write fails. Defaults to False.
        out_format (str, optional): ``'pytorch'``, ``'safetensors'`` or
            ``'pkl'`` (plain pickle, protocol 4, of numpy arrays and plain
            types, as detectron2 reads; only when asked for); defaults to
            the destination's extension (``.safetensors`` or pytorch).
        publish (bool): Append the first 8 hex digits of the file's sha256 to
            its name, as MMDetection's ``publish_model.py`` does; that name
            follows the same rules as ``dst``.

    Returns:
        tuple[str, str | None]: The final path and, with ``publish``, the
        file's sha256 (computed while writing).

    Raises:
        OutputError: The destination is refused or the write failed (disk
            full, read-only, permissions, name too long); no partial file
            is left behind.
    """
    dst = os.fspath(dst)
    check_destination(dst, src, force, probe=False)
    fmt = out_format or ('safetensors' if dst.endswith('.safetensors')
                         else 'pytorch')
    parent = os.path.dirname(os.path.abspath(dst))
    tmp, final = None, dst
    try:
        fd, tmp = _create_temp(dst, parent)
        with os.fdopen(fd, 'wb') as raw:
            # mkstemp creates 0600; give the file what open() would (0666
            # less the umask), so a converted checkpoint is as readable as
            # any other
            os.fchmod(raw.fileno(), 0o666 & ~_umask())
            sha = _write(obj, fmt, raw, tmp, publish)
            raw.flush()
            os.fsync(raw.fileno())
        if publish:
            stem, ext = _split_ext(dst)
            final = f'{stem}-{sha[:8]}{ext}'
            check_destination(final, src, force, probe=False)
        _place(tmp, final, force)
        tmp = None
        _fsync_dir(parent)
        return final, sha
    except OSError as err:
        raise _output_error(final, err) from None
    finally:
        if tmp is not None:
            _remove(tmp)


def _write(obj: Dict[str, Any], fmt: str, raw, tmp: str,
           publish: bool) -> Optional[str]:
    """Serialise ``obj`` into the open temporary file ``raw`` (path
    ``tmp``); return its sha256 with ``publish``."""
    writer = _HashingWriter(raw) if publish else raw
    streams = False
    if fmt == 'pytorch':
        obj, streams = _for_torch_save(obj)
    try:
        if fmt == 'safetensors':
            writer.write(_safetensors_bytes(obj))
        elif fmt == 'pkl':  # numpy arrays + plain types (detectron2)
            pickle.dump(obj, writer, protocol=4)
        elif streams:  # lazy tensors: read and written one by one
            stream_save(obj, writer if publish else tmp)
        elif publish:  # every byte through the hashing writer
            torch.save(obj, writer)
        else:  # by path: torch's own writer, no Python write() per record
            torch.save(obj, tmp)
    except RuntimeError as err:
        if not _TORCH_WRITE_FAILED.search(str(err)):
            raise  # not a failed write: a bug, keep its traceback
        raise _why_torch_failed(err, raw, writer) from None
    return writer.sha256.hexdigest() if publish else None


def _for_torch_save(obj: Any) -> Tuple[Any, bool]:
    """``obj`` as the PyTorch writer takes it, and whether
    :func:`stream_save` writes it: lazy tensors stream where ``torch.save``
    names a storage type for every dtype, and are read first otherwise
    (``torch.save`` would write them as meta tensors)."""
    state_dict = obj.get('state_dict') if isinstance(obj, dict) else None
    if not isinstance(state_dict, dict) or not has_lazy(state_dict):
        return obj, False
    kinds = torch.storage._dtype_to_storage_type_map()
    if all(v.dtype in kinds for v in state_dict.values()
           if isinstance(v, torch.Tensor)):
        return obj, True
    return dict(obj, state_dict=materialize(state_dict)), False


class _Storage:
    """A storage :func:`stream_save` writes after the pickle (its record
    ``data/<key>``)."""

    __slots__ = ('key', 'tensor')

    def __init__(self, key: str, tensor: torch.Tensor) -> None:
        self.key, self.tensor = key, tensor


def _contiguous_strides(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def stream_save(obj: Any, f: Any) -> None:
    """Write ``obj`` as ``torch.save`` does (its zip layout, pickle
    protocol and records), reading and writing one tensor at a time: each
    tensor, lazy (:mod:`mmconv.lazy`) or not, becomes one contiguous storage
    (a tensor object under several names: one storage), read just before
    its record is written and released after it.

    Args:
        obj: The object to save (tensors anywhere in it).
        f (str | file): Path or binary file object.
    """
    from collections import OrderedDict
    storages: Dict[int, _Storage] = {}
    kinds = torch.storage._dtype_to_storage_type_map()

    class Pickler(pickle.Pickler):

        def reducer_override(self, value: Any) -> Any:
            if not isinstance(value, torch.Tensor):
                return NotImplemented
            storage = storages.setdefault(
                id(value), _Storage(str(len(storages)), value))
            shape = tuple(value.shape)
            return (torch._utils._rebuild_tensor_v2,
                    (storage, 0, shape,
                     _contiguous_strides(shape),
                     bool(value.requires_grad), OrderedDict()))

        def persistent_id(self, value: Any) -> Any:
            if not isinstance(value, _Storage):
                return None
            tensor = value.tensor
            return ('storage', getattr(torch, kinds[tensor.dtype]),
                    value.key, 'cpu', tensor.numel())

    data = io.BytesIO()
    Pickler(data, protocol=torch.serialization.DEFAULT_PROTOCOL).dump(obj)
    pickled = data.getvalue()
    with torch.serialization._open_zipfile_writer(f) as zip_file:
        zip_file.write_record('data.pkl', pickled, len(pickled))
        if hasattr(torch.serialization, '_get_storage_alignment'):
            alignment = str(torch.serialization._get_storage_alignment())
            zip_file.write_record('.format_version', '1', 1)
            zip_file.write_record('.storage_alignment', alignment,
                                  len(alignment))
        zip_file.write_record('byteorder', sys.byteorder,
                              len(sys.byteorder))
        for storage in storages.values():
            tensor = load(storage.tensor).detach().cpu().contiguous()
            storage.tensor = None  # the lazy tensor's values go with it
            _write_storage(zip_file, f'data/{storage.key}', tensor)
            del tensor


def _write_storage(zip_file: Any, name: str, tensor: torch.Tensor) -> None:
    """One record holding exactly the bytes of contiguous ``tensor``."""
    size = tensor.numel() * tensor.element_size()
    storage = tensor.untyped_storage()
    if tensor.storage_offset() or storage.nbytes() != size:
        storage = tensor.clone().untyped_storage()  # a view: its own bytes
    if 'StorageBase' in (type(zip_file).write_record.__doc__ or ''):
        zip_file.write_record(name, storage, size)
    else:  # older torch takes the data pointer (and would print a storage
        # passed where it takes a string)
        zip_file.write_record(name, storage.data_ptr(), size)


def _why_torch_failed(err: RuntimeError, raw, writer) -> OSError:
    """The OS error behind torch's RuntimeError for a failed write.

    torch's C++ writer drops the errno; the one seen by our own writer is
    used, else appending a little to the file (and fsyncing it) shows it:
    a full disk, a quota or a file-size limit fail again the same way.
    """
    seen = getattr(writer, 'error', None)
    if seen is not None:
        return seen
    fd = raw.fileno()
    try:
        os.lseek(fd, 0, os.SEEK_END)
        os.write(fd, bytes(_PROBE_BYTES))
        os.fsync(fd)
    except OSError as probe:
        return probe
    line = str(err).strip().splitlines()[-1] if str(err).strip() else ''
    return OSError(errno.EIO, f'torch could not write the file: {line}')


def _create_temp(dst: str, parent: str) -> Tuple[int, str]:
    """Create ``.DST.<random>.part`` next to ``dst``; return (fd, path).

    The DST part of the name is shortened so the name fits the file
    system's limit when DST's own name is close to it.
    """
    # '.' + name + '.' + mkstemp's 8 random characters + '.part'
    room = _name_max(parent) - len('..') - 8 - len('.part')
    name = os.path.basename(dst)
    while name and len(os.fsencode(name)) > room:
        name = name[:-1]
    return tempfile.mkstemp(dir=parent, prefix=f'.{name}.', suffix='.part')


def _place(tmp: str, final: str, force: bool) -> None:
    """Put the written file ``tmp`` in place as ``final``.

    Without ``force`` the step fails (EEXIST) if ``final`` exists by then,
    whoever created it; with ``force`` it is one rename, so concurrent
    writers each put a complete file and the last rename wins.
    """
    if force:
        # refuse a FIFO or device node created since the first check; the
        # window left between this lstat and the rename needs someone with
        # write access to the directory racing us on purpose
        _check_existing(final, None, True)
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # atomic, fails if final exists (even a link)
    except OSError as err:
        if err.errno not in _NO_HARD_LINKS:
            raise
        _move_no_replace(tmp, final)  # file system without hard links
        return
    try:
        os.unlink(tmp)
    except OSError:  # final is complete; a leftover .part is documented
        pass


def _move_no_replace(tmp: str, final: str) -> None:
    """Rename ``tmp`` to ``final`` unless ``final`` exists, where hard
    links are not available."""
    if _renameat2_noreplace(tmp, final):
        return
    # No hard links and no RENAME_NOREPLACE (some FUSE/network file
    # systems): the no-replace guarantee is weakened here. The name is
    # claimed with O_EXCL (so another mmconv writer, or anything creating
    # it with O_EXCL, fails instead of being replaced), then the complete
    # file is renamed over our own empty placeholder. A program that
    # creates ``final`` without O_EXCL in between, or opens the
    # placeholder, can still lose its data, and a reader may see the empty
    # placeholder during the rename.
    fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                 getattr(os, 'O_NOFOLLOW', 0), 0o600)
    os.close(fd)
    try:
        os.replace(tmp, final)
    except BaseException:
        _remove(final)
        raise


_RENAMEAT2 = []  # [function or None], looked up once


def _renameat2_noreplace(old: str, new: str) -> bool:
    """``renameat2(old, new, RENAME_NOREPLACE)`` through libc (Linux).

    Returns:
        bool: True when renamed; False when the call or the flag is not
        supported here.

    Raises:
        OSError: The rename failed (EEXIST: ``new`` exists).
    """
    if not _RENAMEAT2:
        func = None
        if sys.platform.startswith('linux'):
            try:
                func = ctypes.CDLL(None, use_errno=True).renameat2
                func.argtypes = [ctypes.c_int, ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                func.restype = ctypes.c_int
            except (OSError, AttributeError):  # no libc symbol (glibc<2.28)
                func = None
        _RENAMEAT2.append(func)
    func = _RENAMEAT2[0]
    if func is None:
        return False
    at_fdcwd, rename_noreplace = -100, 1  # <fcntl.h>, <linux/fs.h>
    if func(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new),
            rename_noreplace) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_RENAMEAT2:
        return False
    raise OSError(code, os.strerror(code), new)


def _output_error(path: str, err: OSError) -> OutputError:
    """The one-line :class:`OutputError` for an OS error writing ``path``."""
    parent = os.path.dirname(os.path.abspath(path))
    code, reason = err.errno, err.strerror or str(err)
    if code == errno.EEXIST:
        msg = ('appeared while converting (another writer?) and was kept; '
               'pass --force to overwrite it or choose another name')
    elif code == errno.ENOSPC:
        msg = 'no space left on the device; free space or write elsewhere'
    elif code == getattr(errno, 'EDQUOT', None):
        msg = 'disk quota exceeded; free space or write elsewhere'
    elif code == errno.EFBIG:
        msg = 'file too large for the file system; write elsewhere'
    elif code == errno.EROFS:
        msg = f'{parent} is on a read-only file system; write elsewhere'
    elif code == errno.ENAMETOOLONG:
        msg = 'file name or path too long; choose a shorter name'
    elif code in (errno.EACCES, errno.EPERM):
        msg = (f'permission denied creating files in {parent}; fix its '
               'permissions or write elsewhere')
    elif code == errno.ENOTDIR:
        msg = 'a component of the path is not a directory; fix the path'
    elif code == errno.ENOENT:
        msg = (f'cannot create files in {parent} ({reason}); write to an '
               'existing directory on a regular file system')
    else:
        msg = f'cannot write ({reason}); check the path and the disk'
    return OutputError(f'{path}: {msg}')


def _name_max(parent: str) -> int:
    """The longest file name (bytes) the file system of ``parent`` takes."""
    try:
        return os.pathconf(parent, 'PC_NAME_MAX')
    except (OSError, ValueError, AttributeError):
        return 255


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
