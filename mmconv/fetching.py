# Copyright (c) mmconv contributors. All rights reserved.
"""Fetching checkpoints named by URL, ``hf://`` or MMEngine ``scheme://``
name: :func:`local_copy` makes any source a local file or folder (nothing
is unpickled while fetching), :func:`load_source` reads it
(:func:`mmconv.hub.load_local`). Source forms, download limits and the
per-URL cache: README "Source forms" and "Safety".
"""
import hashlib
import os
import re
import socket
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from http.client import HTTPException
from typing import Any, Callable, Iterator, Optional, Tuple
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urldefrag, urlparse

import torch

from .errors import InputError, MMConvError, UnsafeCheckpointError, UsageError
from .hub import hf_snapshot, is_hf_name, load_local

__all__ = ['load_source', 'local_copy', 'is_remote', 'cache_path',
           'TIMEOUT_ENV', 'MAX_BYTES_ENV']

#: ``scheme://`` (optionally ``backend:scheme://``) at the start of a name:
#: URLs, MMEngine model-zoo names and MMEngine file backends.
_REMOTE = re.compile(r'^(?:[\w.+-]+:)?[a-zA-Z][\w.+-]*://')

#: Seconds a download may wait to connect, or for the next bytes.
TIMEOUT_ENV = 'MMCONV_DOWNLOAD_TIMEOUT'
DEFAULT_TIMEOUT = 60.0
#: Largest download accepted, in bytes (``K``/``M``/``G``/``T`` suffixes).
MAX_BYTES_ENV = 'MMCONV_MAX_DOWNLOAD_BYTES'
DEFAULT_MAX_BYTES = 16 * 2**30

#: ``#sha256=<hex>`` at the end of a name: the expected digest (or a
#: prefix of it, at least 8 hex digits, as torch.hub's ``check_hash``).
_SHA256_FRAGMENT = re.compile(r'#sha256=([^#]*)$')
_HEX = re.compile(r'^[0-9a-f]{8,64}$')
_CHUNK = 1 << 20


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


# --------------------------------------------------------------- settings


def _parse_size(text: str) -> int:
    """``'1048576'``, ``'512M'``, ``'2GiB'`` -> bytes (binary units)."""
    m = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*', text,
                     re.IGNORECASE)
    if not m:
        raise ValueError(text)
    power = ' kmgt'.index(m.group(2).lower() or ' ')
    return int(float(m.group(1)) * 1024**power)


def _setting(value: Any, keyword: str, env: str, default: Any,
             parse: Callable[[str], Any]) -> Any:
    """A keyword's value, else the environment variable's, else default;
    it must be positive."""
    if value is None:
        text = os.environ.get(env, '').strip()
        if not text:
            return default
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or value <= 0:
            raise UsageError(f'{env}={text!r} is not a positive number; '
                             'fix or unset the environment variable')
        return value
    if value <= 0:
        raise ValueError(f'{keyword} must be positive, got {value!r}')
    return value


def _expected_sha256(name: str,
                     sha256: Optional[str]) -> Tuple[str, Optional[str]]:
    """Split ``#sha256=<hex>`` off a remote ``name``; return the name
    without it and the expected digest (or prefix), from the fragment or
    the ``sha256`` keyword (they must agree)."""
    found = _SHA256_FRAGMENT.search(name) if is_remote(name) else None
    fragment = found.group(1).strip().lower() if found else None
    if found:
        name = name[:found.start()]
    wanted = [h for h in (fragment, sha256 and sha256.strip().lower()) if h]
    for digest in wanted:
        if not _HEX.match(digest):
            raise InputError(f'{name}: sha256 {digest!r} is not 8 to 64 hex '
                             'digits; give the hex digest of the file')
    if len(wanted) == 2 and not (wanted[0].startswith(wanted[1])
                                 or wanted[1].startswith(wanted[0])):
        raise InputError(f'{name}: the #sha256= fragment and the sha256 '
                         'keyword disagree; give one digest')
    return name, max(wanted, key=len) if wanted else None


def _file_sha256(path: str) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: str, name: str, sha256: Optional[str]) -> None:
    """Raise :class:`InputError` unless the file's digest starts with
    ``sha256`` (a no-op without one)."""
    if sha256 and os.path.isfile(path):
        actual = _file_sha256(path)
        if not actual.startswith(sha256):
            raise InputError(f'{name}: sha256 mismatch (expected {sha256}, '
                             f'got {actual}); check the file or the digest')


# ----------------------------------------------------------------- cache


def cache_path(url: str) -> str:
    """Where the download of ``url`` is cached.

    ``<torch hub dir>/checkpoints/mmconv/<sha256 of the URL, 16 hex>/<file
    name>``: one entry per URL (the ``#`` fragment aside), so two URLs with
    the same file name never share one; the file name is kept for humans
    (and for the reader, which goes by the extension).

    Args:
        url (str): ``http(s)://`` URL.

    Returns:
        str: The cache path (which may not exist).
    """
    url = urldefrag(url)[0]
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = unquote(os.path.basename(urlparse(url).path))
    name = re.sub(r'[^\w.+-]', '_', name).lstrip('.')[-120:] or 'download'
    return os.path.join(torch.hub.get_dir(), 'checkpoints', 'mmconv', key,
                        name)


def _remove(path: str) -> None:
    """Delete a file if it exists."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class _Progress:
    """A one-line download progress bar on standard error."""

    def __init__(self, name: str, total: Optional[int]) -> None:
        self.name, self.total, self.shown = name, total, 0.0

    def update(self, done: int, final: bool = False) -> None:
        """Redraw (at most ~10 times a second, and at the end)."""
        now = time.monotonic()
        if not final and now - self.shown < 0.1:
            return
        self.shown = now
        text = f'\r{self.name}: {done / 2**20:.1f}'
        if self.total:
            text += (f' / {self.total / 2**20:.1f} MiB '
                     f'{100 * done // self.total:3d}%')
        else:
            text += ' MiB'
        sys.stderr.write(text + ('\n' if final else ''))
        sys.stderr.flush()


def _download(url: str, dest: str, sha256: Optional[str], timeout: float,
              max_bytes: int, progress: bool) -> str:
    """Download ``url`` to a temporary file beside ``dest``; return it once
    complete (``Content-Length``, size limit, sha256, not empty). On any
    failure the temporary file is removed and :class:`InputError` raised.
    """
    def fail(why: str, fix: str) -> InputError:
        return InputError(f'{url}: download failed ({why}); {fix}')

    retry = ('check the URL and the network and retry, or download the '
             'file and give its local path')
    directory = os.path.dirname(dest)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix='.', suffix='.part.' + os.path.basename(
                dest))
    except OSError as err:
        raise fail(f'cannot write the cache {directory}: {err}',
                   'set TORCH_HOME to a writable directory') from None
    from .version import __version__
    request = urllib.request.Request(
        url, headers={'User-Agent': f'mmconv/{__version__}'})
    digest, done, total = hashlib.sha256(), 0, None
    try:
        with os.fdopen(fd, 'wb') as out:
            try:
                with urllib.request.urlopen(request,
                                            timeout=timeout) as response:
                    length = response.headers.get('Content-Length', '')
                    total = int(length) if length.isdigit() else None
                    if total is not None and total > max_bytes:
                        raise fail(
                            f'the server announces {total} bytes, over the '
                            f'{max_bytes}-byte limit', f'raise the limit '
                            f'({MAX_BYTES_ENV} or max_bytes=) if the file '
                            'is expected to be that large')
                    bar = _Progress(os.path.basename(dest), total) \
                        if progress else None
                    while True:
                        chunk = response.read(min(_CHUNK,
                                                  max_bytes - done + 1))
                        if not chunk:
                            break
                        done += len(chunk)
                        if done > max_bytes:
                            raise fail(
                                f'more than the {max_bytes}-byte limit',
                                f'raise the limit ({MAX_BYTES_ENV} or '
                                'max_bytes=) if the file is expected to be '
                                'that large')
                        digest.update(chunk)
                        try:
                            out.write(chunk)
                        except OSError as err:
                            raise fail(f'cannot write the cache {directory}'
                                       f': {err}', 'free disk space or set '
                                       'TORCH_HOME to another directory'
                                       ) from None
                        if bar:
                            bar.update(done)
                    if bar:
                        bar.update(done, final=True)
            except HTTPError as err:
                err.close()
                raise fail(f'HTTP {err.code} {err.reason}', retry) from None
            except (socket.timeout, URLError) as err:
                reason = getattr(err, 'reason', err)
                if not isinstance(reason, socket.timeout):
                    raise fail(str(reason), retry) from None
                raise fail(f'timed out: no answer for {timeout:g} s after '
                           f'{done} bytes', 'retry later, or allow longer '
                           f'silences ({TIMEOUT_ENV}=seconds or timeout=)'
                           ) from None
            except (HTTPException, OSError, ValueError) as err:
                raise fail(f'{type(err).__name__}: {err}', retry) from None
            if total is not None and done != total:
                raise fail(f'truncated: got {done} of the {total} bytes the '
                           'server announced', retry)
            if done == 0:
                raise fail('the server sent an empty file', retry)
            if sha256 and not digest.hexdigest().startswith(sha256):
                raise fail(f'sha256 mismatch: expected {sha256}, got '
                           f'{digest.hexdigest()}', 'check the URL and the '
                           'digest; the file was not kept')
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as err:
                raise fail(f'cannot write the cache {directory}: {err}',
                           'free disk space or set TORCH_HOME to another '
                           'directory') from None
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _usable(path: str, sha256: Optional[str]) -> bool:
    """Whether a cache entry may be used: non-empty, digest as expected."""
    try:
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            return False
        return not sha256 or _file_sha256(path).startswith(sha256)
    except OSError:
        return False


@contextmanager
def _http_copy_once(url: str, sha256: Optional[str], timeout: float,
                    max_bytes: int, progress: bool,
                    fresh: bool = False) -> Iterator[Tuple[str, bool]]:
    """``(path, downloaded)`` for ``url``: the cache entry, or (``fresh`` or
    none usable) a new download, moved into the cache when the ``with``
    block ends without error. A cached entry whose reading fails
    (:class:`InputError`, :class:`UnsafeCheckpointError`) is removed."""
    cached = cache_path(url)
    if not fresh and _usable(cached, sha256):
        path, downloaded = cached, False
    else:
        path, downloaded = _download(url, cached, sha256, timeout,
                                     max_bytes, progress), True
    try:
        yield path, downloaded
    except (InputError, UnsafeCheckpointError):
        _remove(path)
        raise
    except BaseException:
        if downloaded:
            _remove(path)
        raise
    if downloaded:
        try:
            os.replace(path, cached)
        except OSError:  # not cached; what was read stays valid
            _remove(path)


@contextmanager
def _http_copy(url: str, **kwargs: Any) -> Iterator[Tuple[str, bool]]:
    """:func:`_http_copy_once`, rank 0 first in a distributed run: rank 0
    downloads (and reads) before the other ranks look in the cache."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = (torch.distributed.get_rank(),
                       torch.distributed.get_world_size())
    if world > 1 and rank != 0:
        torch.distributed.barrier()
    try:
        with _http_copy_once(url, **kwargs) as copy:
            yield copy
    finally:
        if world > 1 and rank == 0:
            torch.distributed.barrier()


# ------------------------------------------------------------ public API


class _Copy:
    """What :func:`_local_copy` yields: the local ``path`` of ``name``
    (without its ``#sha256=`` fragment), whether it is a new download not
    yet in the cache, and, for a cached download, ``refetch()``: a context
    manager giving a fresh download instead."""

    def __init__(self, path: str, name: str, downloaded: bool = False,
                 refetch: Optional[Callable] = None) -> None:
        self.path, self.name = path, name
        self.downloaded, self.refetch = downloaded, refetch


@contextmanager
def _local_copy(name: str, progress: Optional[bool], sha256: Optional[str],
                timeout: Optional[float],
                max_bytes: Optional[int]) -> Iterator[_Copy]:
    """:func:`local_copy`, yielding a :class:`_Copy`."""
    name, sha256 = _expected_sha256(os.fspath(name), sha256)
    if is_hf_name(name):
        if sha256:
            raise UsageError(f'{name}: sha256 does not apply to hf:// names '
                             '(huggingface_hub checks its files); drop it')
        yield _Copy(hf_snapshot(name, progress), name)
        return
    if not is_remote(name):
        path = os.path.expanduser(name)
        if sha256 and os.path.isdir(path):
            raise UsageError(f'{name}: sha256 does not apply to a '
                             'directory; give it for a file')
        _check_sha256(path, name, sha256)
        yield _Copy(path, name)
        return
    url = _resolve_model_zoo(name)
    if not is_remote(url):
        _check_sha256(url, name, sha256)
        yield _Copy(url, name)
    elif url.startswith(('http://', 'https://')):
        kwargs = dict(
            sha256=sha256,
            timeout=_setting(timeout, 'timeout', TIMEOUT_ENV,
                             DEFAULT_TIMEOUT, float),
            max_bytes=_setting(max_bytes, 'max_bytes', MAX_BYTES_ENV,
                               DEFAULT_MAX_BYTES, _parse_size),
            progress=_stderr_is_tty() if progress is None else progress)
        with _http_copy(url, **kwargs) as (path, downloaded):
            yield _Copy(path, name, downloaded, None if downloaded else (
                lambda: _http_copy_once(url, fresh=True, **kwargs)))
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
            _check_sha256(path, name, sha256)
            yield _Copy(path, name)
        finally:
            context.__exit__(None, None, None)


def _stderr_is_tty() -> bool:
    """Whether standard error is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def local_copy(name: str, progress: Optional[bool] = None, *,
               sha256: Optional[str] = None, timeout: Optional[float] = None,
               max_bytes: Optional[int] = None) -> Iterator[str]:
    """A local path holding the checkpoint ``name``; nothing is unpickled.

    * local paths (``~`` expanded) are used in place;
    * ``hf://ORG/NAME[@REVISION]`` is the model's folder in huggingface_hub's
      cache, with only ``config.json`` and the weights
      (:func:`mmconv.hub.hf_snapshot`);
    * ``http(s)://`` URLs (and MMEngine's ``torchvision://``,
      ``open-mmlab://``, ``mmcls://`` names, resolved to their URLs) are
      downloaded once into the URL's own entry of torch's hub cache
      (:func:`cache_path`): to a temporary file, bounded by ``timeout`` and
      ``max_bytes``, checked against ``Content-Length`` and ``sha256``, and
      moved into the cache when the ``with`` block ends without error. A
      cached entry is removed when the block raises
      :class:`~mmconv.errors.InputError` or
      :class:`~mmconv.errors.UnsafeCheckpointError` (it could not be read);
    * any other ``scheme://`` name is fetched to a temporary local file
      through :func:`mmengine.fileio.get_local_path`, i.e. by whichever
      MMEngine file backend is registered for it (``s3://``, ``petrel://``,
      user backends).

    Args:
        name (str): Path, URL, ``hf://`` or ``scheme://`` name; a URL or
            scheme name may end with ``#sha256=<hex digest>``.
        progress (bool, optional): Show a download progress bar on standard
            error. Defaults to whether standard error is a terminal
            (``hf://``: huggingface_hub's default).
        sha256 (str, optional): Expected sha256 of the file (hex; a prefix
            of at least 8 digits is enough). Defaults to the ``#sha256=``
            fragment, if any.
        timeout (float, optional): Seconds a download may wait to connect
            or for more data. Defaults to ``$MMCONV_DOWNLOAD_TIMEOUT``, else
            60.
        max_bytes (int, optional): Largest download accepted. Defaults to
            ``$MMCONV_MAX_DOWNLOAD_BYTES`` (``K``/``M``/``G``/``T``
            suffixes allowed), else 16 GiB.

    Yields:
        str: The local path (valid inside the ``with`` block); a folder for
        ``hf://`` names.

    Raises:
        InputError: The download failed, was cut (timeout, size limit,
            short body) or does not match ``sha256``; unknown name.
    """
    with _local_copy(name, progress, sha256, timeout, max_bytes) as copy:
        yield copy.path


def load_source(name: str, *, unsafe: bool = False,
                warn: Optional[Callable[[str], None]] = None,
                progress: Optional[bool] = None,
                sha256: Optional[str] = None,
                timeout: Optional[float] = None,
                max_bytes: Optional[int] = None, lazy: bool = False) -> Any:
    """Load a checkpoint given by path, folder, URL, ``hf://`` or MMEngine
    ``scheme://`` name.

    Every source takes the same safe path: it is made local with
    :func:`local_copy` (no code runs while fetching), then every file of it
    is read by :func:`~mmconv.reading.load_file` (weights-only with mmconv's
    allowlist, memory-mapped). A Hugging Face folder (``save_pretrained``,
    sharded or not) or ``hf://`` name is one checkpoint ``{'state_dict':
    <all tensors, the files' own names>, 'config': <config.json, if any>,
    'meta': ...}`` (:mod:`mmconv.hub`).
    Only ``unsafe=True`` lifts the allowlist, with a warning. A download
    enters the cache only once it has been read; a cached copy that cannot
    be read is removed and downloaded again, once.

    Args:
        name (str): Path (file or folder), ``http(s)://`` URL,
            ``hf://ORG/NAME[@REVISION]`` or ``scheme://`` name; a URL or
            scheme name may end with ``#sha256=<hex digest>``.
        unsafe (bool): Allow arbitrary pickles (trusted files only).
        warn (callable, optional): Receives the ``unsafe`` warning.
        progress, sha256, timeout, max_bytes: See :func:`local_copy`.
        lazy (bool): Lazy tensors (:mod:`mmconv.lazy`), read when written,
            for local files and folders and ``hf://`` (whose files stay in
            their cache); a URL's or MMEngine backend's temporary copy is
            read whole.

    Returns:
        The loaded object.

    Raises:
        InputError: Missing/corrupt file, failed download, unknown name, a
            folder that holds no checkpoint, inconsistent shards.
        UsageError: Malformed ``hf://`` name; huggingface_hub missing.
        UnsafeCheckpointError: The file needs a global not on the allowlist.
    """
    name = os.fspath(name)
    # lazy tensors read their file when written: only where it stays
    lazy = lazy and (is_hf_name(name) or not is_remote(name))
    with _local_copy(name, progress, sha256, timeout, max_bytes) as copy:
        if copy.path == os.path.expanduser(name):
            return load_local(copy.path, unsafe=unsafe, warn=warn,
                              lazy=lazy)
        try:
            return _load_named(copy, unsafe, warn, lazy)
        except (InputError, UnsafeCheckpointError):
            if copy.refetch is None:
                raise
        # a cached copy that does not read: never reuse it; download the
        # URL afresh, once (a fixed server heals the cache)
        _remove(copy.path)
        with copy.refetch() as (path, _):
            return _load_named(_Copy(path, copy.name, True), unsafe, warn,
                               lazy)


def _load_named(copy: _Copy, unsafe: bool,
                warn: Optional[Callable[[str], None]],
                lazy: bool = False) -> Any:
    """:func:`load_local` on a local copy; its errors name the source, not
    the (temporary or cached) local copy."""
    try:
        return load_local(copy.path, unsafe=unsafe, warn=warn, lazy=lazy)
    except MMConvError as err:
        text = str(err).replace(copy.path, copy.name, 1)
        if copy.downloaded:
            text += ' (the download was not cached)'
        raise type(err)(text) from None
