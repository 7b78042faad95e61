# Copyright (c) mmconv contributors. All rights reserved.
"""Golden runs: record every face of mmconv on every registered format, and
compare two recordings (proof that a refactor changes no output).

::

    python tools/golden.py record OUT_DIR     # writes OUT_DIR/golden.json
    python tools/golden.py compare A_DIR B_DIR [--strict-text]

``record`` runs in one process against whatever ``mmconv`` is importable
(``PYTHONPATH=/path/to/other/tree`` records that tree; the fixtures,
configs and converter scripts are taken from the tree ``mmconv`` comes
from) and writes, per case: the face and arguments, the exit code, stdout
and stderr (temporary paths, the tree, loopback ports and object addresses
normalised), the files the case left in its directory and, for every
written file, a fingerprint of each tensor (dtype, shape, sha256 of the raw
bytes) plus its non-tensor content (``mmconv_version`` dropped). Sources
are the lazily built ones of ``tests/fixtures/sources.py`` (one per
registered format, seeded before each build; their fingerprints are
recorded too, so a fixture change is told apart from a conversion change).

Cases (ids are stable; each is printed with its time and exit code while
recording):

* ``preset/P/F``: the ``tools/model_converters`` preset made for each
  format (``preset_main``: ``selfsup2mmdet`` for the self-supervised
  ResNets, ``torchvision2d2``, ``d2_to_mmdet`` for detectron2 and Caffe2,
  ``mmdet2torchvision``, ``detr_family2mmdet``), and every ResNet preset
  on ``moco``; ``preset-to/...``: a preset's other ``--to`` choices once;
  ``script/P``: each script file run as ``__main__`` once;
  ``preset-refuses/...``: a preset given a family it does not read (vit,
  convnext, swin, swinv2; a ResNet for the DETR one).
* ``convert/F/to-T``: ``mmconv convert`` to every target of F's family
  (ResNet: mmdet, detectron2, torchvision; others: mmdet);
  ``inspect-json/F``, ``inspect-v/F``: ``mmconv inspect --json`` / ``-v``;
  ``inspect-from/F`` and ``convert-verbose/FAMILY`` for the first format
  of each family; ``face/...``: ``--out-format safetensors``, a
  ``.safetensors`` DST and source, ``--select student`` (DINO ResNet, DINO
  ViT, iBOT, a DINOv2 training state), ``--select ema`` (ConvNeXt),
  ``--json``, ``--publish``, ``--force``, ``--prefix backbone.`` on a
  detector file, ``--style``, ``--keep-fc``, ``--keep-classes``,
  ``--window-size``, ``--from``, ``--selfsup``, ``.pkl`` detectron2 /
  Detectron1 / MSRA files, ``--unsafe-load``, a global torch admits
  (``collections.Counter``), a loopback ``http://`` source (downloaded
  into ``$TORCH_HOME`` under the temporary directory), ``formats``,
  ``formats -v``, ``--version`` and every ``--help``.
* ``error/...``: one case per refusal of the error table (usage 2, input 3,
  unsafe 4, conversion 5, output 6, check 7; see :func:`_error_cases`);
  hostile files try to ``touch`` a marker in the case directory, which the
  file listing of the case would show.
* ``check/...``: ``mmconv check`` on the shipped MoCo v2 config (exit 0;
  the exit-7 cases are ``error/check-*``).
* ``init-target/F``: ``SelfSupPretrained`` (built by MMEngine's registry
  from the module's ``init_cfg``) on F's raw file into F's target module of
  ``SOURCES``, fingerprints of the module after ``init_weights``: every
  format of the ViT, ConvNeXt and Swin families, the ResNets of
  :data:`INIT_TARGETS` (one per container kind / own-layout path) and
  three whole DETR-family detectors.
* ``init-config/...``: ``SelfSupPretrained`` on a raw file into a shipped
  config's whole model (``Config.fromfile`` + MMDetection ``MODELS``,
  ``model.init_weights()``; ViT/ConvNeXt/Swin made small with the tests'
  cfg-options, SyncBN as BN): selfsup_pretrain mocov2, swav, densecl and
  dino (ResNet), vitdet MAE and DINOv2 ViT-S/14 reg4, both convnext
  configs, all three swin configs, and detr_family dino-4scale (as
  ``model.init_cfg``); plus two refusals (a SwAV file into the MoCo config,
  a ConvNeXt file into the Swin-T config).

Every module is built after ``torch.manual_seed(0)`` and initialised after
``torch.manual_seed(1)``, so its random parts are the same in every run.
About 6-8 minutes on 2 busy cores (half of it building and saving the
sources); the outputs are fingerprinted and deleted case by case.

``compare`` prints every difference, grouped: failures (exit codes, output
tensors, files left behind, unexpected exceptions, changed sources, missing
cases) make it exit 1; report text (stdout, stderr, logs, non-tensor file
content, tensor order) is listed, identical differences once with the cases
they occur in, for the note (exit 0 unless ``--strict-text``).
"""
import argparse
import contextlib
import difflib
import hashlib
import http.server
import io
import json
import os
import pickle
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

FORMAT_VERSION = 1
_MISSING = object()


# --- fingerprints ------------------------------------------------------------
def _fingerprint(obj) -> Optional[List[Any]]:
    """``[dtype, shape, sha256 of the raw bytes]`` of a torch tensor or a
    numpy array, or None for anything else."""
    import numpy as np
    import torch
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        digest = hashlib.sha256()
        if t.numel():
            digest.update(t.view(torch.uint8).numpy())
        return [str(obj.dtype), list(obj.shape), digest.hexdigest()]
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        arr = np.ascontiguousarray(obj)
        return [f'numpy.{arr.dtype}', list(arr.shape),
                hashlib.sha256(arr.tobytes()).hexdigest()]
    return None


class Normaliser:
    """Replaces what legitimately differs between runs in text."""

    def __init__(self, tmp: str, root: str) -> None:
        pairs = [(os.path.realpath(tmp), '<TMP>'), (tmp, '<TMP>'),
                 (os.path.realpath(root), '<ROOT>'), (root, '<ROOT>')]
        self.pairs = sorted(set(pairs), key=lambda p: -len(p[0]))

    def text(self, s: str) -> str:
        for old, new in self.pairs:
            s = s.replace(old, new)
        s = re.sub(r'127\.0\.0\.1:\d+', '127.0.0.1:<PORT>', s)
        s = re.sub(r'localhost:\d+', 'localhost:<PORT>', s)
        s = re.sub(r'0x[0-9a-fA-F]{8,}', '0x<ADDR>', s)
        # download progress bars (only on a terminal)
        s = '\n'.join(line for line in s.split('\n')
                      if '\r' not in line and not re.search(r'\d%\|', line))
        return s

    def value(self, v: Any) -> Any:
        """A JSON-able, normalised copy of a non-tensor value."""
        import numpy as np
        if v is None or isinstance(v, (bool, int)):
            return v
        if isinstance(v, float):
            return v if v == v and abs(v) != float('inf') else repr(v)
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, bytes):
            return f'<bytes {len(v)} sha256 ' \
                f'{hashlib.sha256(v).hexdigest()[:16]}>'
        if isinstance(v, np.generic):
            return f'{type(v).__name__}({v.item()!r})'
        if isinstance(v, np.ndarray):  # object arrays
            return f'<ndarray {v.dtype} {list(v.shape)}>'
        if isinstance(v, dict):
            return {str(k): self.value(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [self.value(x) for x in v]
        if isinstance(v, argparse.Namespace):
            return {'<Namespace>': self.value(vars(v))}
        return self.text(f'<{type(v).__module__}.{type(v).__qualname__}> '
                         f'{v!r}')


def split_tensors(obj: Any, norm: Normaliser
                  ) -> Tuple[Dict[str, List[Any]], Any]:
    """``(tensors, rest)``: every tensor/array leaf by its path
    (``state_dict/conv1.weight``) and the object without them (a container
    holding only tensors disappears; in lists a tensor leaves
    ``'<tensor>'``)."""
    tensors: Dict[str, List[Any]] = {}

    def walk(o: Any, path: str) -> Any:
        fp = _fingerprint(o)
        if fp is not None:
            tensors[path] = fp
            return _MISSING
        if isinstance(o, dict):
            out = {}
            for k, v in o.items():
                r = walk(v, f'{path}/{k}' if path else str(k))
                if r is not _MISSING:
                    out[str(k)] = r
            return out if out or not o else _MISSING
        if isinstance(o, (list, tuple)):
            out = [walk(v, f'{path}/{i}') for i, v in enumerate(o)]
            return [('<tensor>' if r is _MISSING else r) for r in out]
        return norm.value(o)

    rest = walk(obj, '')
    return tensors, (None if rest is _MISSING else rest)


def _drop_versions(meta: Any) -> Any:
    """Remove what differs between versions of the same code (mmconv's
    version number) from non-tensor file content."""
    if isinstance(meta, dict):
        return {k: _drop_versions(v) for k, v in meta.items()
                if k not in ('mmconv_version', )}
    if isinstance(meta, list):
        return [_drop_versions(v) for v in meta]
    return meta


class _NumpyOnly(pickle.Unpickler):
    """Reads the ``.pkl`` files mmconv writes (numpy arrays, plain types)."""

    def find_class(self, module: str, name: str) -> Any:
        if module.split('.')[0] in ('numpy', ) or \
                (module, name) == ('collections', 'OrderedDict'):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'global {module}.{name} refused')


def read_output(path: str) -> Tuple[str, Any]:
    """``(kind, object)`` of a written file (torch zip, pickle,
    safetensors), or ``('unreadable', message)``."""
    import torch
    with open(path, 'rb') as f:
        head = f.read(9)
    try:
        if head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < \
                os.path.getsize(path):  # safetensors: header size + JSON
            from safetensors import safe_open
            with safe_open(path, framework='pt') as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            for k, v in meta.items():
                try:
                    meta[k] = json.loads(v)
                except ValueError:
                    pass
            # the header's key order is not kept by safetensors' writer
            meta = dict(sorted(meta.items()))
            return 'safetensors', {'state_dict': tensors, 'meta': meta}
        if head.startswith(b'PK'):  # weights-only: never runs a payload
            return 'torch-zip', torch.load(path, map_location='cpu',
                                           weights_only=True)
        if head[:1] == b'\x80':
            with open(path, 'rb') as f:
                return 'pickle', _NumpyOnly(f).load()
        return 'other', f'<{os.path.getsize(path)} bytes, ' \
            f'sha256 {_file_sha(path)[:16]}>'
    except Exception as err:  # noqa: BLE001
        return 'unreadable', f'{type(err).__name__}: {err}'


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
            h.update(block)
    return h.hexdigest()


# --- capture -----------------------------------------------------------------
class Capture:
    """stdout, stderr and MMEngine's log of one case."""

    def __init__(self, index: int) -> None:
        self.out, self.err, self.log = (io.StringIO(), io.StringIO(),
                                        io.StringIO())
        self.index = index
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> 'Capture':
        self._stack.enter_context(contextlib.redirect_stdout(self.out))
        self._stack.enter_context(contextlib.redirect_stderr(self.err))
        if 'mmengine.logging' in sys.modules:
            import logging

            from mmengine.logging import MMLogger
            logger = MMLogger.get_instance(f'golden-{self.index}',
                                           log_level='INFO')
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            handler = logging.StreamHandler(self.log)
            handler.setFormatter(logging.Formatter(
                '%(levelname)s %(message)s'))
            handler.setLevel(logging.INFO)
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()


def _run_entry(func: Callable[[], Any]) -> Tuple[Any, Optional[str]]:
    """Run a command entry point: ``(exit code, unexpected exception)``."""
    try:
        code = func()
    except SystemExit as exit_:
        code = exit_.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException as err:  # noqa: BLE001 - recorded, not raised
        tb = traceback.format_exception_only(type(err), err)
        return 'exception', ''.join(tb).strip()
    return code, None


# --- the recorder ------------------------------------------------------------
class Recorder:
    """Runs the cases and collects their records."""

    def __init__(self, tmp: str, root: str, only: Optional[str],
                 keep: bool = False) -> None:
        self.tmp, self.root, self.keep = tmp, root, keep
        self.norm = Normaliser(tmp, root)
        self.only = re.compile(only) if only else None
        self.cases: Dict[str, Dict[str, Any]] = {}
        self.tables: Dict[str, Dict[str, List[Any]]] = {}
        self.sources: Dict[str, Dict[str, Any]] = {}
        self.src_paths: Dict[str, str] = {}
        self.targets: Dict[str, Callable[[], Any]] = {}
        self.url = ''
        self.count = 0

    # tables of fingerprints, stored once
    def table(self, tensors: Dict[str, List[Any]]) -> str:
        blob = json.dumps(tensors, separators=(',', ':'))
        key = hashlib.sha256(blob.encode()).hexdigest()[:24]
        self.tables.setdefault(key, tensors)
        return key

    def wanted(self, cid: str) -> bool:
        if cid in self.cases:
            raise ValueError(f'duplicate case id {cid}')
        return self.only is None or bool(self.only.search(cid))

    def case_dir(self, cid: str) -> str:
        d = os.path.join(self.tmp, 'cases', re.sub(r'[^\w.-]+', '_', cid))
        os.makedirs(d)
        return d

    # sources
    def add_source(self, name: str, build: Callable[[], Any],
                   filename: Optional[str] = None,
                   save: Optional[Callable[[Any, str], None]] = None) -> str:
        """Build (seeded), save and fingerprint a source checkpoint."""
        import torch
        path = os.path.join(self.tmp, 'src', filename or f'{name}.pth')
        if name in self.src_paths:
            return self.src_paths[name]
        started = time.perf_counter()
        _seed(0)
        obj = build()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        from tests.fixtures.official_layouts import official_pickle_globals
        with official_pickle_globals():  # VICReg's pickled function
            if save is not None:
                save(obj, path)
            else:
                torch.save(obj, path)
        tensors, rest = split_tensors(obj, self.norm)
        if os.environ.get('GOLDEN_DEBUG'):
            print(f'source {name}: {time.perf_counter() - started:.2f} s, '
                  f'{os.path.getsize(path) >> 20} MiB', file=sys.__stdout__,
                  flush=True)
        self.sources[name] = {'file': self.norm.text(path),
                              'tensors': self.table(tensors),
                              'n_tensors': len(tensors), 'rest': rest}
        self.src_paths[name] = path
        return path

    def src(self, name: str) -> str:
        return self.src_paths[name]

    # the files a case leaves behind
    @staticmethod
    def _listing(d: str) -> Dict[str, str]:
        """``{relative path: 'dir' | 'file'}`` under ``d``."""
        out = {}
        for base, dirs, files in os.walk(d):
            for n in dirs:
                out[os.path.relpath(os.path.join(base, n), d)] = 'dir'
            for n in files:
                out[os.path.relpath(os.path.join(base, n), d)] = 'file'
        return out

    def _snapshot(self, d: str) -> Dict[str, str]:
        """``{relative path: 'dir' | sha256}`` of what is in ``d``."""
        return {n: k if k == 'dir' else _file_sha(os.path.join(d, n))
                for n, k in self._listing(d).items()}

    def _files(self, d: str, before: Dict[str, str],
               publish: bool) -> Dict[str, Any]:
        after = self._listing(d)
        files = {}
        for name in sorted(set(before) | set(after)):
            shown = name
            if publish:
                shown = re.sub(r'-[0-9a-f]{8}(\.[\w.]+)$', r'-<SHA8>\1', name)
            shown = re.sub(r'^(\..+\.)\w+\.part$', r'\1<RANDOM>.part', shown)
            if name not in after:
                files[shown] = {'state': 'removed'}
                continue
            path = os.path.join(d, name)
            if after[name] == 'dir':
                files[shown] = {'state': 'dir'}
                continue
            if name in before and before[name] == _file_sha(path):
                files[shown] = {'state': 'unchanged'}
                continue
            state = 'changed' if name in before else 'new'
            kind, obj = read_output(path)
            tensors, rest = split_tensors(obj, self.norm)
            files[shown] = {'state': state, 'kind': kind,
                            'tensors': self.table(tensors),
                            'n_tensors': len(tensors),
                            'rest': _drop_versions(rest)}
            if publish:
                files[shown]['published_sha_matches'] = \
                    _file_sha(path)[:8] in name
        return files

    def _record(self, cid: str, rec: Dict[str, Any], started: float) -> None:
        rec['seconds'] = round(time.perf_counter() - started, 3)
        self.cases[cid] = rec
        code = rec.get('exit')
        print(f'{rec["seconds"]:7.2f}s  exit {code!s:9s} {cid}',
              file=sys.__stdout__, flush=True)

    def cli(self, cid: str, argv_of: Callable[[str], List[str]], *,
            face: str = 'mmconv',
            setup: Optional[Callable[[str], None]] = None,
            publish: bool = False) -> None:
        """A command-line case: ``face`` is ``'mmconv'``, ``'preset:NAME'``
        or ``'script:NAME'``; ``argv_of(case_dir)`` gives its arguments."""
        if not self.wanted(cid):
            return
        started = time.perf_counter()
        d = self.case_dir(cid)
        if setup is not None:
            setup(d)
        argv = argv_of(d)
        before = self._snapshot(d)
        from mmconv.cli import main, preset_main
        if face == 'mmconv':
            func = lambda: main(list(argv))  # noqa: E731
        elif face.startswith('preset:'):
            func = lambda: preset_main(face[7:], list(argv))  # noqa: E731
        else:  # script:NAME: the file itself, as __main__
            import runpy
            script = os.path.join(self.root, 'tools', 'model_converters',
                                  f'{face[7:]}.py')

            def func():
                saved = sys.argv
                sys.argv = [script, *argv]
                try:
                    runpy.run_path(script, run_name='__main__')
                finally:
                    sys.argv = saved
                return 0
        self.count += 1
        with Capture(self.count) as cap:
            code, crash = _run_entry(func)
        rec = {'face': face, 'argv': [self.norm.text(a) for a in argv],
               'exit': code, 'stdout': self.norm.text(cap.out.getvalue()),
               'stderr': self.norm.text(cap.err.getvalue()),
               'log': self.norm.text(cap.log.getvalue()),
               'files': self._files(d, before, publish)}
        if crash:
            rec['exception'] = self.norm.text(crash)
        if not self.keep:  # outputs are fingerprinted: free the disk
            shutil.rmtree(d, ignore_errors=True)
        self._record(cid, rec, started)

    def init(self, cid: str, build: Callable[[], Any], *, face: str,
             describe: Dict[str, Any], init: Callable[[Any], None]) -> None:
        """A ``SelfSupPretrained`` case: ``build()`` returns a module
        (seeded before), ``init(module)`` initialises it; the module's
        state dict after it is fingerprinted."""
        if not self.wanted(cid):
            return
        started = time.perf_counter()
        self.count += 1
        rec: Dict[str, Any] = {'face': face,
                               'describe': self.norm.value(describe)}
        module = None
        with Capture(self.count) as cap:
            try:
                _seed(0)
                module = build()
                _seed(1)
                init(module)
                rec['exit'] = 0
            except BaseException as err:  # noqa: BLE001 - recorded
                code = getattr(err, 'exit_code', None)
                rec['exit'] = code if isinstance(code, int) else 'exception'
                rec['error'] = self.norm.text(
                    f'{type(err).__name__}: {err}')
                if not isinstance(code, int):
                    rec['exception'] = self.norm.text(''.join(
                        traceback.format_exception(type(err), err,
                                                   err.__traceback__)[-3:]))
        rec.update(stdout=self.norm.text(cap.out.getvalue()),
                   stderr=self.norm.text(cap.err.getvalue()),
                   log=self.norm.text(cap.log.getvalue()))
        if module is not None and rec['exit'] == 0:
            tensors = {k: _fingerprint(v)
                       for k, v in module.state_dict().items()}
            rec['model'] = self.table(tensors)
            rec['n_tensors'] = len(tensors)
            rec['records'] = _init_records(module, self.norm)
        del module
        self._record(cid, rec, started)


def _init_records(module, norm: Normaliser) -> Dict[str, Any]:
    """What ``SelfSupPretrained`` left on the modules it initialised
    (format, counts; its fingerprints only counted)."""
    out = {}
    for name, sub in module.named_modules():
        record = getattr(sub, '_mmconv_pretrained', None)
        if isinstance(record, dict):
            shown = {k: v for k, v in record.items() if k != 'fingerprints'}
            fps = record.get('fingerprints')
            shown['fingerprints'] = None if fps is None else len(fps)
            out[name or '<model>'] = norm.value(shown)
    return out


def _seed(seed: int) -> None:
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _numpy_tree(obj: Any) -> Any:
    """Tensors inside nested dicts -> numpy arrays (detectron2 ``.pkl``)."""
    import torch
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: _numpy_tree(v) for k, v in obj.items()}
    return obj


def _save_pickle(obj: Any, path: str) -> None:
    with open(path, 'wb') as f:
        pickle.dump(_numpy_tree(obj), f, protocol=4)


class _Payload:
    """Unpickling this runs ``os.system`` (touches a marker file): the
    hostile input every reader must refuse without running it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


# --- cases -------------------------------------------------------------------
def _dst_suffix(target: Optional[str]) -> str:
    return '.pkl' if target == 'detectron2' else '.pth'


def _matching_preset(name: str, family: str) -> Optional[str]:
    """The converter script made for a format (None: none is)."""
    if family == 'detr':
        return 'detr_family2mmdet'
    if family != 'resnet':
        return None
    return {'torchvision': 'torchvision2d2', 'detectron2': 'd2_to_mmdet',
            'caffe2': 'd2_to_mmdet', 'mmdet': 'mmdet2torchvision'
            }.get(name, 'selfsup2mmdet')


#: ``init-target`` cases of the two big-model families (every format of
#: the others): one per container kind / own-layout path, and the DETRs
#: with and without not-carried tensors.
INIT_TARGETS = {'resnet': ('moco', 'dino', 'torchvision', 'mmdet',
                           'detectron2', 'caffe2'),
                'detr': ('detr', 'dino_4scale', 'dn_deformable_detr')}


def _formats() -> Dict[str, Any]:
    """The registered formats that convert (those registered only to be
    recognised and refused, ``facts['not_supported']``, have no source)."""
    from mmconv import FORMATS
    return {n: f for n, f in FORMATS.items()
            if not f.facts.get('not_supported')}


def _source_cases(r: Recorder) -> None:
    """Every registered format through every face."""
    from mmconv import FAMILIES
    from mmconv.cli import PRESETS
    firsts: Dict[str, str] = {}
    for name, fmt in _formats().items():
        firsts.setdefault(fmt.family, name)
    for name, fmt in _formats().items():
        src = r.src(name)
        family = FAMILIES[fmt.family]
        for preset_name, preset in PRESETS.items():
            if preset.families and fmt.family not in preset.families:
                continue
            # the matching preset; every one that reads it for moco
            if preset_name != _matching_preset(name, fmt.family) and \
                    name != 'moco':
                continue
            default = preset.default_target or family.default_target
            dst = 'out' + _dst_suffix(default)
            r.cli(f'preset/{preset_name}/{name}',
                  lambda d, s=src, o=dst: [s, os.path.join(d, o)],
                  face=f'preset:{preset_name}')
        for target in family.targets:
            r.cli(f'convert/{name}/to-{target}',
                  lambda d, s=src, t=target: [
                      'convert', s, os.path.join(d, 'out' + _dst_suffix(t)),
                      '--to', t])
        r.cli(f'inspect-json/{name}', lambda d, s=src: ['inspect', s,
                                                        '--json'])
        r.cli(f'inspect-v/{name}', lambda d, s=src: ['inspect', s, '-v'])
        if firsts[fmt.family] == name:
            r.cli(f'inspect-from/{name}', lambda d, s=src, n=name: [
                'inspect', s, '--from', n])
    for family, name in firsts.items():
        src = r.src(name)
        r.cli(f'convert-verbose/{family}', lambda d, s=src: [
            'convert', s, os.path.join(d, 'out.pth'), '--verbose'])
    # families no preset reads
    for family, name in firsts.items():
        if any(not p.families or family in p.families
               for p in PRESETS.values()):
            continue
        r.cli(f'preset-refuses/selfsup2mmdet/{family}',
              lambda d, s=r.src(name): [s, os.path.join(d, 'out.pth')],
              face='preset:selfsup2mmdet')
    r.cli('preset-refuses/detr_family2mmdet/resnet',
          lambda d: [r.src('torchvision'), os.path.join(d, 'out.pth')],
          face='preset:detr_family2mmdet')
    # a preset's other --to choices, once each
    for preset_name, preset in PRESETS.items():
        for target in preset.targets or ():
            if target == preset.default_target:
                continue
            src = r.src('detectron2' if preset_name == 'd2_to_mmdet'
                        else 'mmdet')
            r.cli(f'preset-to/{preset_name}/to-{target}',
                  lambda d, s=src, t=target: [
                      s, os.path.join(d, 'out' + _dst_suffix(t)), '--to', t],
                  face=f'preset:{preset_name}')
    # each script file as __main__, on its natural source
    natural = {'selfsup2mmdet': 'moco', 'torchvision2d2': 'torchvision',
               'd2_to_mmdet': 'detectron2', 'mmdet2torchvision': 'mmdet',
               'detr_family2mmdet': 'detr'}
    for preset_name, preset in PRESETS.items():
        default = preset.default_target or 'mmdet'
        src = r.src(natural.get(preset_name, 'moco'))
        r.cli(f'script/{preset_name}',
              lambda d, s=src, o='out' + _dst_suffix(default): [
                  s, os.path.join(d, o)], face=f'script:{preset_name}')


def _face_cases(r: Recorder) -> None:
    """Options and inputs beyond the defaults, each once."""
    from mmconv.cli import PRESETS
    out = lambda d, n='out.pth': os.path.join(d, n)  # noqa: E731
    s = r.src
    r.cli('face/formats', lambda d: ['formats'])
    r.cli('face/formats-v', lambda d: ['formats', '-v'])
    r.cli('face/version', lambda d: ['--version'])
    r.cli('face/help', lambda d: ['--help'])
    for sub in ('convert', 'inspect', 'check', 'formats'):
        r.cli(f'face/help-{sub}', lambda d, c=sub: [c, '--help'])
    for preset_name in PRESETS:
        r.cli(f'face/help-preset-{preset_name}', lambda d: ['--help'],
              face=f'preset:{preset_name}')
    r.cli('face/out-format-safetensors', lambda d: [
        'convert', s('moco'), out(d), '--out-format', 'safetensors'])
    r.cli('face/safetensors-extension', lambda d: [
        'convert', s('dinov2'), out(d, 'out.safetensors')])
    r.cli('face/safetensors-source', lambda d: [
        'convert', r.src('moco.safetensors'), out(d)])
    for name in ('dino', 'dino_vit', 'ibot', 'dinov2_training'):
        r.cli(f'face/select-student/{name}', lambda d, n=name: [
            'convert', s(n), out(d), '--select', 'student'])
    r.cli('face/select-teacher/dinov2_training', lambda d: [
        'convert', s('dinov2_training'), out(d)])
    r.cli('face/select-ema/convnext', lambda d: [
        'convert', s('convnext'), out(d), '--select', 'ema'])
    r.cli('face/json-convert', lambda d: [
        'convert', s('moco'), out(d), '--json'])
    r.cli('face/json-convert-detectron2', lambda d: [
        'convert', s('torchvision'), out(d, 'out.pkl'), '--to', 'detectron2',
        '--json'])
    r.cli('face/publish', lambda d: [
        'convert', s('moco'), out(d), '--publish'], publish=True)

    def old_dst(d: str) -> None:
        with open(os.path.join(d, 'out.pth'), 'wb') as f:
            f.write(b'old')
    r.cli('face/force-overwrites', lambda d: [
        'convert', s('moco'), out(d), '--force'], setup=old_dst)
    r.cli('face/prefix-backbone', lambda d: [
        'convert', s('mmdet_detector'), out(d), '--prefix', 'backbone.'])
    r.cli('face/mmdet2torchvision-detector', lambda d: [
        s('mmdet_detector'), out(d)], face='preset:mmdet2torchvision')
    r.cli('face/style-caffe', lambda d: [
        'convert', s('moco'), out(d), '--style', 'caffe'])
    r.cli('face/style-pytorch-detectron2', lambda d: [
        'convert', s('detectron2'), out(d, 'out.pkl'), '--to', 'detectron2',
        '--style', 'pytorch'])
    r.cli('face/keep-fc-torchvision', lambda d: [
        'convert', s('torchvision'), out(d), '--to', 'torchvision',
        '--keep-fc'])
    r.cli('face/keep-fc-detectron2', lambda d: [
        'convert', s('torchvision'), out(d, 'out.pkl'), '--to', 'detectron2',
        '--keep-fc'])
    r.cli('face/keep-classes', lambda d: [
        'convert', s('detr'), out(d), '--keep-classes'])
    r.cli('face/window-size-swin', lambda d: [
        'convert', s('swin'), out(d), '--window-size', '12'])
    r.cli('face/selfsup-moco', lambda d: [
        s('moco'), out(d), '--selfsup', 'moco'], face='preset:selfsup2mmdet')
    r.cli('face/from-given', lambda d: [
        'convert', s('swav'), out(d), '--from', 'swav'])
    for name in ('detectron2.pkl', 'caffe2.pkl', 'msra_blobs.pkl'):
        r.cli(f'face/pkl-source/{name}', lambda d, n=name: [
            s(n), out(d)], face='preset:d2_to_mmdet')
        r.cli(f'face/pkl-source-to-detectron2/{name}', lambda d, n=name: [
            'convert', s(n), out(d, 'out.pkl'), '--to', 'detectron2'])
    r.cli('face/detectron2-pkl-roundtrip', lambda d: [
        'convert', r.src('detectron2.pkl'), out(d, 'again.pkl'), '--to',
        'detectron2'])
    r.cli('face/unsafe-load', lambda d: [
        'convert', s('datetime'), out(d), '--unsafe-load'])
    r.cli('face/torch-allowed-global', lambda d: [
        'convert', s('counter'), out(d)])
    r.cli('face/url-source', lambda d: [
        'convert', f'{r.url}/moco.pth', out(d)])
    r.cli('face/url-inspect-cached', lambda d: [
        'inspect', f'{r.url}/moco.pth', '--json'])


def _error_cases(r: Recorder) -> None:
    """One case per refusal of the error table (the exit code recorded is
    whatever the code under test gives)."""
    import numpy as np
    import torch
    s = r.src
    out = lambda d, n='out.pth': os.path.join(d, n)  # noqa: E731

    def writes(name: str, make: Callable[[str], None]):
        """setup: create ``name`` in the case directory with ``make``."""
        return lambda d: make(os.path.join(d, name))

    # 2: usage
    r.cli('error/usage-no-arguments', lambda d: ['convert'])
    r.cli('error/usage-no-command', lambda d: [])
    r.cli('error/usage-unknown-from', lambda d: [
        'convert', s('moco'), out(d), '--from', 'nosuch'])
    r.cli('error/usage-preset-unknown-to', lambda d: [
        s('mmdet'), out(d), '--to', 'mmdet'], face='preset:mmdet2torchvision')
    r.cli('error/usage-preset-no-to', lambda d: [
        s('moco'), out(d), '--to', 'mmdet'], face='preset:selfsup2mmdet')
    for face in ('mmconv', 'preset:selfsup2mmdet', 'preset:d2_to_mmdet'):
        pre = ['convert'] if face == 'mmconv' else []
        tag = face.split(':')[-1]
        r.cli(f'error/keep-fc-mmdet-output/{tag}', lambda d, p=pre: [
            *p, s('torchvision'), out(d), '--keep-fc'], face=face)
        r.cli(f'error/keep-classes-resnet/{tag}', lambda d, p=pre: [
            *p, s('torchvision'), out(d), '--keep-classes'], face=face)
    r.cli('error/to-detectron2-detr', lambda d: [
        'convert', s('detr'), out(d, 'out.pkl'), '--to', 'detectron2'])
    r.cli('error/to-torchvision-vit', lambda d: [
        'convert', s('mae'), out(d), '--to', 'torchvision'])
    r.cli('error/style-detr', lambda d: [
        'convert', s('detr'), out(d), '--style', 'caffe'])
    r.cli('error/prefix-detr', lambda d: [
        'convert', s('detr'), out(d), '--prefix', 'backbone.'])
    r.cli('error/select-detr', lambda d: [
        'convert', s('detr'), out(d), '--select', 'student'])
    r.cli('error/select-swin', lambda d: [
        'convert', s('swin'), out(d), '--select', 'teacher'])
    r.cli('error/window-size-resnet', lambda d: [
        'convert', s('moco'), out(d), '--window-size', '7'])
    r.cli('error/style-detr-family-preset', lambda d: [
        s('detr'), out(d), '--style', 'caffe'],
        face='preset:detr_family2mmdet')
    r.cli('error/detectron2-not-pkl', lambda d: [
        'convert', s('torchvision'), out(d), '--to', 'detectron2'])
    r.cli('error/detectron2-not-pkl-preset', lambda d: [
        s('torchvision'), out(d)], face='preset:torchvision2d2')
    r.cli('error/out-format-safetensors-detectron2', lambda d: [
        'convert', s('torchvision'), out(d, 'out.pkl'), '--to', 'detectron2',
        '--out-format', 'safetensors'])
    r.cli('error/inspect-keep-fc', lambda d: [
        'inspect', s('moco'), '--keep-fc'])

    # 3: input
    def random_bytes(p: str) -> None:
        with open(p, 'wb') as f:
            f.write(np.random.RandomState(0).bytes(4096))

    def zip_not_torch(p: str) -> None:
        import zipfile
        with zipfile.ZipFile(p, 'w') as z:
            z.writestr('hello.txt', 'not a checkpoint')

    def truncated(fraction: float):
        def make(p: str) -> None:
            with open(s('torchvision'), 'rb') as f:
                data = f.read()
            with open(p, 'wb') as f:
                f.write(data[:int(len(data) * fraction)])
        return make

    def truncated_pkl(p: str) -> None:
        with open(p, 'wb') as f:
            f.write(pickle.dumps({'model': {'w': np.zeros(100)}})[:50])

    def text_file(p: str) -> None:
        with open(p, 'w') as f:
            f.write('{"state_dict": {}}\n')

    inputs = {
        'missing': None,
        'directory': lambda p: os.mkdir(p),
        'empty-file': lambda p: open(p, 'wb').close(),
        'random-bytes': random_bytes,
        'zip-not-torch': zip_not_torch,
        'empty-dict': lambda p: torch.save({}, p),
        'non-tensors': lambda p: torch.save(
            {'state_dict': {'a': 1, 'b': [1, 2]}}, p),
        'bare-tensor': lambda p: torch.save(torch.zeros(3), p),
        'list-of-tensors': lambda p: torch.save([torch.zeros(3)], p),
        'truncated-10pct': truncated(0.1),
        'truncated-90pct': truncated(0.9),
        'truncated-pkl': truncated_pkl,
        'text-file': text_file,
    }
    for kind, make in inputs.items():
        name = 'in.pkl' if kind == 'truncated-pkl' else 'in.pth'
        setup = None if make is None else writes(name, make)
        r.cli(f'error/input-{kind}', lambda d, n=name: [
            os.path.join(d, n), out(d)], face='preset:selfsup2mmdet',
            setup=setup)
    r.cli('error/input-missing-inspect', lambda d: [
        'inspect', os.path.join(d, 'nope.pth')])
    r.cli('error/input-url-404', lambda d: [
        'convert', f'{r.url}/nope.pth', out(d)])
    r.cli('error/input-url-refused', lambda d: [
        'convert', 'http://127.0.0.1:1/x.pth', out(d)])
    r.cli('error/input-unknown-scheme', lambda d: [
        'convert', 'nosuchscheme://bucket/x.pth', out(d)])
    r.cli('error/input-unknown-model-zoo-name', lambda d: [
        'convert', 'torchvision://nosuch_model', out(d)])

    # 4: unsafe
    def backbone() -> Dict[str, Any]:
        g = torch.Generator().manual_seed(3)
        return {'conv1.weight': torch.randn(64, 3, 7, 7, generator=g),
                'bn1.weight': torch.randn(64, generator=g)}

    def hostile(kind: str):
        def make(p: str) -> None:
            marker = os.path.join(os.path.dirname(p), 'PWNED')
            if kind == 'top-level':
                torch.save(_Payload(marker), p)
            elif kind == 'nested':
                torch.save({'state_dict': {**backbone(),
                                           'x': _Payload(marker)}}, p)
            elif kind == 'legacy':
                torch.save({'state_dict': backbone(),
                            'meta': _Payload(marker)}, p,
                           _use_new_zipfile_serialization=False)
            elif kind == 'pkl':
                with open(p, 'wb') as f:
                    pickle.dump({'model': {'conv1.weight': np.zeros(3)},
                                 'x': _Payload(marker)}, f)
            elif kind == 'tar':
                import tarfile
                inner = io.BytesIO()
                torch.save({'state_dict': {'w': _Payload(marker)}}, inner)
                with tarfile.open(p, 'w') as tar:
                    info = tarfile.TarInfo('checkpoint.pth')
                    info.size = len(inner.getvalue())
                    info.mtime = 0
                    tar.addfile(info, io.BytesIO(inner.getvalue()))
            elif kind == 'pth-tar-args':
                torch.save({'state_dict': backbone(),
                            'args': _Payload(marker)}, p)
        return make

    for kind, name in (('top-level', 'in.pth'), ('nested', 'in.pth'),
                       ('legacy', 'in.pth'), ('pkl', 'in.pkl'),
                       ('tar', 'in.pth.tar'),
                       ('pth-tar-args', 'in.pth.tar')):
        r.cli(f'error/unsafe-{kind}', lambda d, n=name: [
            os.path.join(d, n), out(d)], face='preset:selfsup2mmdet',
            setup=writes(name, hostile(kind)))
    r.cli('error/unsafe-nested-inspect', lambda d: [
        'inspect', os.path.join(d, 'in.pth')],
        setup=writes('in.pth', hostile('nested')))
    r.cli('error/unsafe-harmless-global', lambda d: [
        'convert', s('datetime'), out(d)])
    r.cli('error/unsafe-url', lambda d: [
        'convert', f'{r.url}/hostile.pth', out(d)])

    # 5: conversion
    r.cli('error/conversion-unknown-layout', lambda d: [
        'convert', os.path.join(d, 'in.pth'), out(d)],
        setup=writes('in.pth', lambda p: torch.save(
            {'foo.weight': torch.zeros(3), 'bar.bias': torch.ones(2)}, p)))
    r.cli('error/conversion-ambiguous', lambda d: [
        'convert', os.path.join(d, 'in.pth'), out(d)],
        setup=writes('in.pth', lambda p: torch.save(
            {'state_dict': {'encoder_q.conv1.weight': torch.zeros(64, 3, 7, 7),
                            'base_encoder.conv1.weight':
                            torch.ones(64, 3, 7, 7)}}, p)))
    r.cli('error/conversion-wrong-from', lambda d: [
        'convert', s('moco'), out(d), '--from', 'swav'])
    r.cli('error/conversion-wrong-from-family', lambda d: [
        'convert', s('moco'), out(d), '--from', 'detr'])
    r.cli('error/conversion-wrong-selfsup', lambda d: [
        s('moco'), out(d), '--selfsup', 'swav'], face='preset:selfsup2mmdet')
    r.cli('error/conversion-empty-result', lambda d: [
        'convert', os.path.join(d, 'in.pth'), out(d), '--from', 'moco'],
        setup=writes('in.pth', lambda p: torch.save({'state_dict': {
            'module.encoder_k.conv1.weight': torch.zeros(64, 3, 7, 7),
            'module.queue': torch.zeros(128, 16)}}, p)))
    r.cli('error/conversion-collision', lambda d: [
        'convert', s('densecl_collision'), out(d)])
    r.cli('error/conversion-detr-outside-layout', lambda d: [
        'convert', s('detr_extra'), out(d)])
    r.cli('error/conversion-select-student-teacher-only', lambda d: [
        'convert', s('dinov2'), out(d), '--select', 'student'])
    r.cli('error/conversion-prefix-matches-nothing', lambda d: [
        'convert', s('moco'), out(d), '--prefix', 'nosuch.'])
    r.cli('error/conversion-preset-scope-vit', lambda d: [
        s('mae'), out(d)], face='preset:detr_family2mmdet')

    # 6: output
    def old(p: str) -> None:
        with open(p, 'wb') as f:
            f.write(b'old')
    r.cli('error/output-dst-exists', lambda d: [
        'convert', s('moco'), out(d)], setup=writes('out.pth', old))
    r.cli('error/output-dst-exists-preset', lambda d: [
        s('moco'), out(d)], face='preset:selfsup2mmdet',
        setup=writes('out.pth', old))

    def copy_source(p: str) -> None:
        shutil.copyfile(s('moco'), p)
    r.cli('error/output-dst-is-source', lambda d: [
        'convert', os.path.join(d, 'src.pth'), os.path.join(d, 'src.pth'),
        '--force'], setup=writes('src.pth', copy_source))
    r.cli('error/output-dst-is-directory', lambda d: [
        'convert', s('moco'), os.path.join(d, 'adir')],
        setup=writes('adir', os.mkdir))
    r.cli('error/output-dst-is-directory-force', lambda d: [
        'convert', s('moco'), os.path.join(d, 'adir'), '--force'],
        setup=writes('adir', os.mkdir))
    r.cli('error/output-parent-missing', lambda d: [
        'convert', s('moco'), os.path.join(d, 'nope', 'x.pth')])
    r.cli('error/output-checked-before-loading', lambda d: [
        'convert', os.path.join(d, 'missing.pth'), out(d)],
        setup=writes('out.pth', old))

    # 7: check
    shipped = os.path.join(
        r.root, 'configs', 'selfsup_pretrain',
        'mask-rcnn_r50-mocov2-selfsup-raw-pre_fpn_1x_coco.py')
    light = 'model.backbone.norm_cfg.type=BN'
    r.cli('check/moco-ok', lambda d: [
        'check', shipped, '--json', '--cfg-options',
        f'model.backbone.init_cfg.checkpoint={s("moco")}', light])
    r.cli('check/moco-ok-table', lambda d: [
        'check', shipped, '--cfg-options',
        f'model.backbone.init_cfg.checkpoint={s("moco")}', light])
    r.cli('error/check-swav-in-moco-config', lambda d: [
        'check', shipped, '--cfg-options',
        f'model.backbone.init_cfg.checkpoint={s("swav")}', light])
    r.cli('error/check-mmdet-own-config-raw-file', lambda d: [
        'check',
        'mmdet::selfsup_pretrain/mask-rcnn_r50-mocov2-pre_fpn_1x_coco.py',
        '--cfg-options', f'model.backbone.init_cfg.checkpoint={s("moco")}',
        light])


def _set_selfsup_init(module, checkpoint: str, **kwargs) -> None:
    """Give ``module`` a ``SelfSupPretrained`` init_cfg and run
    ``init_weights`` (MMEngine builds the initializer from its registry)."""
    module.init_cfg = dict(type='SelfSupPretrained', checkpoint=checkpoint,
                           **kwargs)
    module.init_weights()


def _init_target_cases(r: Recorder) -> None:
    """``SelfSupPretrained`` on every format's raw file into the module of
    its ``SOURCES`` entry."""
    for name, fmt in _formats().items():
        if name not in INIT_TARGETS.get(fmt.family, (name, )):
            continue

        def build(n=name, family=fmt.family):
            module = r.targets[n]()
            if family == 'detr':  # no torchvision:// download
                module.backbone.init_cfg = None
            return module
        r.init(f'init-target/{name}', build, face='SelfSupPretrained',
               describe={'target': f'SOURCES[{name!r}]().build_target()',
                         'checkpoint': r.src(name)},
               init=lambda m, n=name: _set_selfsup_init(m, r.src(n)))


def _config_cases(r: Recorder) -> None:
    """``SelfSupPretrained`` into shipped configs (one or a few per
    family, see the module docstring)."""
    from tests.fixtures import convnext_layouts as CL
    from tests.fixtures import swin_layouts as SL
    from tests.fixtures import vit_layouts as VL
    cfgdir = os.path.join(r.root, 'configs')
    bn = {'model.backbone.norm_cfg.type': 'BN'}
    cases: List[Tuple[str, str, str, Dict[str, Any]]] = [
        ('resnet/mocov2', 'selfsup_pretrain/mask-rcnn_r50-mocov2-selfsup-'
         'raw-pre_fpn_1x_coco.py', 'moco', bn),
        ('resnet/swav', 'selfsup_pretrain/mask-rcnn_r50-swav-selfsup-raw-'
         'pre_fpn_1x_coco.py', 'swav', bn),
        ('resnet/densecl', 'selfsup_pretrain/mask-rcnn_r50-densecl-selfsup-'
         'raw-pre_fpn_1x_coco.py', 'densecl', bn),
        ('resnet/dino', 'selfsup_pretrain/mask-rcnn_r50-dino-selfsup-raw-'
         'pre_fpn_1x_coco.py', 'dino', bn),
    ]
    vit = {'mae': ('vitdet/mask-rcnn_vit-b-mae-selfsup-raw-pre_simple-fpn_'
                   'lsj-100e_coco.py', lambda: VL.build_mae_training()),
           'dinov2-s14-reg4': ('vitdet/mask-rcnn_vit-s14-dinov2-reg4-selfsup-'
                               'raw-pre_simple-fpn_lsj-100e_coco.py',
                               lambda: VL.build_dinov2_hub('vits14_reg4'))}
    for tag, (path, build) in vit.items():
        cid = f'vit/{tag}'
        name = f'cfg-vit-{tag}'
        layout = _layout_once(r, name, build)
        args = layout.vitdet
        cases.append((cid, path, name, {
            'model.backbone.img_size': args['img_size'],
            'model.backbone.embed_dim': args['embed_dim'],
            'model.backbone.depth': args['depth'],
            'model.backbone.num_heads': args['num_heads'],
            'model.backbone.window_size': 4,
            'model.backbone.global_attn_indexes': [args['depth'] - 1],
            'model.backbone.rel_pos_img_size': 128,
            'model.neck.backbone_channel': args['embed_dim']}))
    small_convnext = {
        'model.backbone.arch._delete_': True,
        'model.backbone.arch.depths': list(CL.DEPTHS),
        'model.backbone.arch.channels': list(CL.DIMS),
        'model.neck.in_channels': list(CL.DIMS)}
    for tag, path, build in (
            ('official', 'convnext/mask-rcnn_convnext-t-p4-w7-official-raw-'
             'pre_fpn_amp-ms-crop-3x_coco.py',
             lambda: CL.build_official_v1('released')),
            ('fcmae', 'convnext/mask-rcnn_convnextv2-t-p4-w7-fcmae-selfsup-'
             'raw-pre_fpn_amp-ms-crop-3x_coco.py',
             lambda: CL.build_fcmae('released'))):
        name = f'cfg-convnext-{tag}'
        _layout_once(r, name, build)
        cases.append((f'convnext/{tag}', path, name, small_convnext))
    swin_options: Dict[str, Dict[str, Any]] = {}
    for tag, path, build in (
            ('swin-t', 'swin/mask-rcnn_swin-t-p4-w7-official-raw-pre_fpn_1x_'
             'coco.py', lambda: SL.build_official('released')),
            ('simmim-swin-b', 'swin/mask-rcnn_swin-b-p4-w7-simmim-selfsup-'
             'raw-pre_fpn_1x_coco.py', lambda: SL.build_simmim()),
            ('swinv2-t', 'swin/mask-rcnn_swinv2-t-w8-official-raw-pre_fpn_1x_'
             'coco.py', lambda: SL.build_official('released', v2=True))):
        name = f'cfg-swin-{tag}'
        layout = _layout_once(r, name, build, save=SL.save_with_yacs)
        widths = [SL.EMBED * 2**i for i in range(4)]
        options = {'model.neck.in_channels': widths,
                   'model.backbone.drop_path_rate': 0.0}
        arch = 'model.backbone.arch.' if layout.v2 else 'model.backbone.'
        options.update({arch + 'embed_dims': SL.EMBED,
                        arch + 'depths': list(SL.DEPTHS),
                        arch + 'num_heads': list(SL.HEADS)})
        cases.append((f'swin/{tag}', path, name, options))
        swin_options.setdefault(tag, options)
    cases.append(('detr/dino-4scale', 'detr_family/dino-4scale_r50_official_'
                  'coco.py', 'dino_4scale', {
                      'model.backbone.init_cfg': None,
                      'model.init_cfg': {'type': 'SelfSupPretrained',
                                         'checkpoint': '<SRC>'}}))
    # refusals
    cases.append(('refuses/swav-file-moco-config', cases[0][1], 'swav', bn))
    cases.append(('refuses/convnext-file-swin-config', 'swin/mask-rcnn_swin-'
                  't-p4-w7-official-raw-pre_fpn_1x_coco.py',
                  'cfg-convnext-official', swin_options['swin-t']))
    for cid, path, src_name, options in cases:
        _config_case(r, f'init-config/{cid}', os.path.join(cfgdir, path),
                     src_name, options)


_LAYOUTS: Dict[str, Any] = {}


def _layout_once(r: Recorder, name: str, build: Callable[[], Any],
                 save: Optional[Callable[[Any, str], None]] = None):
    """A fixture layout, its checkpoint saved as source ``name``."""
    if name not in _LAYOUTS:
        _seed(0)
        _LAYOUTS[name] = build()
    layout = _LAYOUTS[name]
    r.add_source(name, lambda: layout.checkpoint,
                 filename=f'{name}-{layout.filename}', save=save)
    return layout


def _config_case(r: Recorder, cid: str, path: str, src_name: str,
                 options: Dict[str, Any]) -> None:
    src = r.src(src_name)
    options = json.loads(json.dumps(options).replace('"<SRC>"',
                                                     json.dumps(src)))
    if 'model.init_cfg' not in options:
        options['model.backbone.init_cfg.checkpoint'] = src

    def build():
        from mmengine.config import Config
        from mmengine.registry import init_default_scope

        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=False)
        cfg = Config.fromfile(path)
        cfg.merge_from_dict(options)
        init_default_scope('mmdet')
        _seed(0)
        return MODELS.build(cfg.model)

    r.init(cid, build, face='SelfSupPretrained:config',
           describe={'config': path, 'options': options,
                     'source': src_name},
           init=lambda m: m.init_weights())


# --- extra sources -----------------------------------------------------------
def _extra_sources(r: Recorder) -> None:
    """Sources the faces and refusals need beyond one per format."""
    import collections
    import datetime

    import torch
    from tests.fixtures import vit_layouts as VL

    def checkpoint(name: str):
        """A saved source, read back memory-mapped (no rebuild)."""
        return torch.load(r.src(name), map_location='cpu', mmap=True,
                          weights_only=False)

    r.add_source('detectron2.pkl', lambda: checkpoint('detectron2'),
                 filename='model_final_detectron2.pkl', save=_save_pickle)
    r.add_source('caffe2.pkl', lambda: checkpoint('caffe2'),
                 filename='model_final_detectron1.pkl', save=_save_pickle)
    r.add_source('msra_blobs.pkl', lambda: {
        k: v for k, v in checkpoint('caffe2')['blobs'].items()
        if k != 'lr'}, filename='R-50.pkl', save=_save_pickle)
    r.add_source('dinov2_training',
                 lambda: VL.build_dinov2_training().checkpoint,
                 filename='model_0124999.pth')

    def detector():
        sd = checkpoint('mmdet')['state_dict']
        out = {f'backbone.{k}': v for k, v in sd.items()}
        g = torch.Generator().manual_seed(7)
        out['neck.lateral_convs.0.conv.weight'] = torch.randn(
            256, 256, 1, 1, generator=g)
        out['rpn_head.rpn_conv.weight'] = torch.randn(256, 256, 3, 3,
                                                      generator=g)
        return {'state_dict': out, 'meta': {'epoch': 12}}
    r.add_source('mmdet_detector', detector, filename='epoch_12.pth')

    def with_global(extra: Any):
        """A torchvision ResNet-18 plus one non-tensor object."""
        def build():
            import torchvision
            _seed(4)
            sd = torchvision.models.resnet18(weights=None).state_dict()
            return {'state_dict': sd, 'stats': extra}
        return build
    # a global on no allowlist (runs only with --unsafe-load)
    r.add_source('datetime', with_global(datetime.date(2020, 1, 2)),
                 filename='resnet18_date.pth')
    # a global torch's own weights-only loader admits
    r.add_source('counter', with_global(collections.Counter(a=1)),
                 filename='resnet18_counter.pth')

    def collision():
        """DenseCL's ``backbone.*`` and ``encoder_q.0.*`` (aliases when
        equal) with different values."""
        g = torch.Generator().manual_seed(8)
        return {'state_dict': {
            'queue2': torch.zeros(16, 8),
            'encoder_q.1.mlp2.0.weight': torch.zeros(8, 8),
            'backbone.conv1.weight': torch.randn(64, 3, 7, 7, generator=g),
            'encoder_q.0.conv1.weight': torch.randn(64, 3, 7, 7,
                                                    generator=g)}}
    r.add_source('densecl_collision', collision, filename='densecl_bad.pth')

    def detr_extra():
        ckpt = checkpoint('detr')
        ckpt['model'] = dict(ckpt['model'])
        ckpt['model']['transformer.extra_layer.weight'] = torch.ones(4, 4)
        return ckpt
    r.add_source('detr_extra', detr_extra, filename='detr_extra.pth')

    def as_safetensors(obj, path):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in obj.items()}, path)
    r.add_source('moco.safetensors', lambda: {
        k[len('module.encoder_q.'):]: v
        for k, v in checkpoint('moco')['state_dict'].items()
        if k.startswith('module.encoder_q.') and '.fc.' not in k},
        filename='moco_backbone.safetensors', save=as_safetensors)


# --- http --------------------------------------------------------------------
def _serve(directory: str) -> Tuple[str, Callable[[], None]]:
    """A loopback HTTP server for ``directory``: ``(base url, stop)``."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=directory, **kwargs)

        def log_message(self, *args) -> None:  # keep stderr clean
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
    return f'http://127.0.0.1:{server.server_address[1]}', stop


# --- record ------------------------------------------------------------------
def record(out_dir: str, only: Optional[str] = None,
           keep: bool = False) -> int:
    """Run every case, write ``out_dir/golden.json``."""
    t0 = time.perf_counter()
    os.environ['COLUMNS'] = '100'  # argparse help width
    import torch
    import mmconv
    root = os.path.dirname(os.path.dirname(os.path.abspath(mmconv.__file__)))
    # the fixtures of the same tree (a site-packages ``tests`` must not win)
    sys.path[:] = [root] + [p for p in sys.path if p != root]
    for name in [m for m in sys.modules if m == 'tests' or
                 m.startswith('tests.')]:
        del sys.modules[name]
    import mmengine.logging  # noqa: F401 (log capture)
    import tests.fixtures.sources as fixture_sources
    if not os.path.abspath(fixture_sources.__file__).startswith(root):
        raise SystemExit(f'tests.fixtures comes from '
                         f'{fixture_sources.__file__}, not {root}')
    tmp = tempfile.mkdtemp(prefix='mmconv-golden-')
    os.environ['TORCH_HOME'] = os.path.join(tmp, 'torch_home')
    r = Recorder(tmp, root, only, keep)
    print(f'golden record: mmconv {mmconv.__version__} from '
          f'{os.path.abspath(mmconv.__file__)}; temporary directory {tmp}',
          file=sys.__stdout__, flush=True)
    stop = lambda: None  # noqa: E731
    times = {}
    try:
        t = time.perf_counter()
        for name in _formats():
            def build(n=name):
                source = fixture_sources.SOURCES[n]()
                r.targets[n] = source.build_target
                return source.checkpoint
            r.add_source(name, build)
        _extra_sources(r)
        www = os.path.join(tmp, 'www')
        os.makedirs(www)
        shutil.copyfile(r.src('moco'), os.path.join(www, 'moco.pth'))
        torch.save({'state_dict': {'conv1.weight': torch.zeros(1)},
                    'x': _Payload(os.path.join(www, 'PWNED'))},
                   os.path.join(www, 'hostile.pth'))
        r.url, stop = _serve(www)
        times['sources'] = time.perf_counter() - t
        for label, step in (('formats', _source_cases),
                            ('faces', _face_cases),
                            ('errors', _error_cases),
                            ('init-target', _init_target_cases),
                            ('init-config', _config_cases)):
            t = time.perf_counter()
            step(r)
            times[label] = time.perf_counter() - t
        pwned = os.path.exists(os.path.join(www, 'PWNED'))
    finally:
        stop()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    import mmdet
    import mmengine
    total = time.perf_counter() - t0
    doc = {
        'version': FORMAT_VERSION,
        'run': {'mmconv_root': root, 'mmconv_version': mmconv.__version__,
                'python': sys.version.split()[0], 'torch': torch.__version__,
                'mmengine': mmengine.__version__, 'mmdet': mmdet.__version__,
                'only': only, 'seconds': round(total, 1),
                'url_payload_ran': pwned,
                'seconds_by_step': {k: round(v, 1) for k, v in times.items()},
                'date': time.strftime('%Y-%m-%d %H:%M:%S')},
        'sources': r.sources, 'cases': r.cases, 'tables': r.tables,
    }
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, 'golden.json')
    with open(path, 'w') as f:
        json.dump(doc, f, indent=0, sort_keys=False)
        f.write('\n')
    codes: Dict[str, int] = {}
    for rec in r.cases.values():
        codes[str(rec['exit'])] = codes.get(str(rec['exit']), 0) + 1
    print(f'golden record: {len(r.cases)} cases, {len(r.sources)} sources, '
          f'exit codes {dict(sorted(codes.items()))}; {total:.1f} s '
          f'({", ".join(f"{k} {v:.1f}" for k, v in times.items())}); '
          f'wrote {path}', file=sys.__stdout__)
    return 0


# --- compare -----------------------------------------------------------------
def _load(d: str) -> Dict[str, Any]:
    path = d if d.endswith('.json') else os.path.join(d, 'golden.json')
    with open(path) as f:
        doc = json.load(f)
    if doc.get('version') != FORMAT_VERSION:
        raise SystemExit(f'{path}: golden format {doc.get("version")}, '
                         f'expected {FORMAT_VERSION}')
    return doc


def _short(v: Any, n: int = 160) -> str:
    s = json.dumps(v) if not isinstance(v, str) else repr(v)
    return s if len(s) <= n else s[:n] + '...'


def _diff_values(a: Any, b: Any, path: str = '') -> List[str]:
    """Paths where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            p = f'{path}/{k}' if path else k
            if k not in b:
                out.append(f'{p}: only in A ({_short(a[k])})')
            elif k not in a:
                out.append(f'{p}: only in B ({_short(b[k])})')
            else:
                out += _diff_values(a[k], b[k], p)
        if not out and list(a) != list(b):
            out.append(f'{path or "/"}: same keys, other order')
        return out
    if isinstance(a, list) and isinstance(b, list) and a != b:
        ja = [json.dumps(x, sort_keys=True) for x in a]
        jb = [json.dumps(x, sort_keys=True) for x in b]
        if sorted(ja) == sorted(jb):
            return [f'{path or "/"}: same {len(a)} items, other order']
        if len(a) == len(b) and all(
                isinstance(x, (dict, list)) for x in a + b):
            out = []
            for i, (x, y) in enumerate(zip(a, b)):
                out += _diff_values(x, y, f'{path}/{i}')
            return out
        lines = [line for line in difflib.unified_diff(
            ja, jb, n=0, lineterm='') if line[:1] in '+-' and
            line[:3] not in ('---', '+++')]
        return [f'{path or "/"}: {len(a)} -> {len(b)} items'] + [
            f'  {line[0]} {_short(json.loads(line[1:]))}' for line in lines]
    if a != b:
        return [f'{path or "/"}: A={_short(a)} B={_short(b)}']
    return []


def _diff_tables(ta: Dict[str, List[Any]], tb: Dict[str, List[Any]]
                 ) -> Tuple[List[str], bool]:
    """``(lines, order_only)``: tensor differences of two tables."""
    lines = []
    only_a = [k for k in ta if k not in tb]
    only_b = [k for k in tb if k not in ta]
    changed = [k for k in ta if k in tb and ta[k] != tb[k]]
    if only_a:
        lines.append(f'{len(only_a)} tensors only in A: '
                     + ', '.join(only_a[:6]) + (' ...' if len(only_a) > 6
                                                else ''))
    if only_b:
        lines.append(f'{len(only_b)} tensors only in B: '
                     + ', '.join(only_b[:6]) + (' ...' if len(only_b) > 6
                                                else ''))
    for k in changed[:12]:
        a, b = ta[k], tb[k]
        what = []
        if a[0] != b[0]:
            what.append(f'dtype {a[0]} -> {b[0]}')
        if a[1] != b[1]:
            what.append(f'shape {a[1]} -> {b[1]}')
        if a[2] != b[2] and not what:
            what.append('values differ')
        lines.append(f'{k}: {", ".join(what)}')
    if len(changed) > 12:
        lines.append(f'... {len(changed) - 12} more changed tensors '
                     f'({len(changed)} in all)')
    return lines, (not lines and list(ta) != list(tb))


class Report:
    """Differences, grouped, with identical text differences merged."""

    def __init__(self) -> None:
        self.failures: Dict[str, List[str]] = {}
        self.text: Dict[str, Dict[Tuple[str, ...], List[str]]] = {}

    def fail(self, group: str, line: str) -> None:
        self.failures.setdefault(group, []).append(line)

    def note(self, group: str, cid: str, lines: List[str]) -> None:
        self.text.setdefault(group, {}).setdefault(tuple(lines),
                                                   []).append(cid)

    def print(self, a: str, b: str, max_lines: int) -> Tuple[int, int]:
        n_fail = sum(len(v) for v in self.failures.values())
        n_text = sum(len(c) for g in self.text.values() for c in g.values())
        print(f'golden compare: A={a}  B={b}')
        print(f'\n== FAILURES ({n_fail}): exit codes, output tensors, '
              'files left, exceptions, sources, cases')
        for group, lines in self.failures.items():
            print(f'\n-- {group} ({len(lines)})')
            for line in lines:
                print('  ' + line.replace('\n', '\n    '))
        if not n_fail:
            print('  none')
        print(f'\n== TEXT ({n_text} case differences): report text, logs, '
              'non-tensor file content; list each in the note')
        for group, diffs in self.text.items():
            print(f'\n-- {group} ({sum(len(c) for c in diffs.values())} '
                  f'cases, {len(diffs)} distinct)')
            for lines, cids in diffs.items():
                shown = ', '.join(cids[:8]) + (
                    f' ... ({len(cids)} cases)' if len(cids) > 8 else '')
                print(f'  [{shown}]')
                body = list(lines)
                if max_lines and len(body) > max_lines:
                    body = body[:max_lines] + [
                        f'... {len(lines) - max_lines} more lines '
                        '(--max-lines 0 for all)']
                for line in body:
                    print('    ' + line)
        if not n_text:
            print('  none')
        return n_fail, n_text


def _text_diff(a: str, b: str) -> List[str]:
    return [line.rstrip('\n') for line in difflib.unified_diff(
        a.splitlines(), b.splitlines(), 'A', 'B', n=1, lineterm='')][2:]


def compare(dir_a: str, dir_b: str, strict_text: bool = False,
            max_lines: int = 60) -> int:
    """Print every difference between two recordings; the exit status."""
    A, B = _load(dir_a), _load(dir_b)
    rep = Report()
    for key in ('torch', 'mmengine', 'mmdet', 'python'):
        if A['run'].get(key) != B['run'].get(key):
            rep.fail('environment', f'{key}: {A["run"].get(key)} -> '
                     f'{B["run"].get(key)} (outputs are not comparable)')
    if A['run'].get('only') or B['run'].get('only'):
        rep.note('partial recording', '-', [
            f'A only={A["run"].get("only")!r}, '
            f'B only={B["run"].get("only")!r}'])
    ta, tb = A['tables'], B['tables']
    for name in list(A['sources']) + [n for n in B['sources']
                                      if n not in A['sources']]:
        sa, sb = A['sources'].get(name), B['sources'].get(name)
        if sa is None or sb is None:
            rep.fail('sources',
                     f'{name}: only in {"B" if sa is None else "A"}')
            continue
        lines, _ = _diff_tables(ta[sa['tensors']], tb[sb['tensors']])
        lines += _diff_values(sa['rest'], sb['rest'], 'rest')
        if sa['file'] != sb['file']:
            lines.append(f'file {sa["file"]} -> {sb["file"]}')
        if lines:
            rep.fail('sources', f'{name} (fixture changed; the cases using '
                     'it do not compare conversions): ' + '; '.join(lines))
    ca, cb = A['cases'], B['cases']
    for cid in [c for c in ca if c not in cb]:
        rep.fail('cases', f'{cid}: only in A')
    for cid in [c for c in cb if c not in ca]:
        rep.fail('cases', f'{cid}: only in B')
    for cid in [c for c in ca if c in cb]:
        a, b = ca[cid], cb[cid]
        if a['exit'] != b['exit']:
            rep.fail('exit codes', f'{cid}: {a["exit"]} -> {b["exit"]}'
                     + (f'\nB stderr: {b.get("stderr", "").strip()[-300:]}'
                        if b.get('stderr') else ''))
        if a.get('exception') != b.get('exception'):
            rep.fail('exceptions', f'{cid}:\nA: {a.get("exception")}\n'
                     f'B: {b.get("exception")}')
        if a.get('error') != b.get('error'):
            rep.note('init errors', cid, _text_diff(a.get('error') or '',
                                                    b.get('error') or ''))
        if 'model' in a or 'model' in b:
            if 'model' not in a or 'model' not in b:
                rep.fail('tensors', f'{cid}: initialised model only in '
                         f'{"A" if "model" in a else "B"}')
            else:
                lines, order = _diff_tables(ta[a['model']], tb[b['model']])
                if lines:
                    rep.fail('tensors', f'{cid}: ' + '\n'.join(lines))
                if order:
                    rep.note('tensor order', cid, ['state_dict order'])
            records = _diff_values(a.get('records'), b.get('records'))
            if records:
                rep.note('init records', cid, records)
        fa, fb = a.get('files', {}), b.get('files', {})
        for name in list(fa) + [n for n in fb if n not in fa]:
            x, y = fa.get(name), fb.get(name)
            if x is None or y is None:
                rep.fail('files', f'{cid}: {name} only in '
                         f'{"A" if y is None else "B"} '
                         f'({(x or y).get("state")})')
                continue
            if x.get('state') != y.get('state') or \
                    x.get('kind') != y.get('kind'):
                rep.fail('files', f'{cid}: {name}: {x.get("state")} '
                         f'{x.get("kind") or ""} -> {y.get("state")} '
                         f'{y.get("kind") or ""}')
            if 'tensors' in x and 'tensors' in y:
                lines, order = _diff_tables(ta[x['tensors']],
                                            tb[y['tensors']])
                if lines:
                    rep.fail('tensors', f'{cid}: {name}: ' + '\n'.join(lines))
                if order:
                    rep.note('tensor order', cid, [f'{name}: tensor order'])
                meta = _diff_values(x.get('rest'), y.get('rest'))
                if meta:
                    rep.note('file content (non-tensor)', cid,
                             [f'{name}: {m}' for m in meta])
            if x.get('published_sha_matches') is not None and \
                    x.get('published_sha_matches') != \
                    y.get('published_sha_matches'):
                rep.fail('files', f'{cid}: {name}: published name '
                         'no longer matches the file sha256')
        if a.get('argv') != b.get('argv'):
            rep.note('arguments', cid, [f'A: {a.get("argv")}',
                                        f'B: {b.get("argv")}'])
        for stream in ('stdout', 'stderr', 'log'):
            d = _text_diff(a.get(stream) or '', b.get(stream) or '')
            if d:
                rep.note(stream, cid, d)
    n_fail, n_text = rep.print(dir_a, dir_b, max_lines)
    ta_s = A['run'].get('seconds')
    tb_s = B['run'].get('seconds')
    print(f'\nsummary: {n_fail} failures, {n_text} text differences '
          f'({len(ca)} / {len(cb)} cases; record times {ta_s} s / {tb_s} s)')
    if n_fail:
        return 1
    return 1 if (strict_text and n_text) else 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description='Record golden runs of every mmconv face, or compare '
        'two recordings.')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('record', help='run every case, write '
                       'OUT_DIR/golden.json')
    p.add_argument('out_dir', metavar='OUT_DIR')
    p.add_argument('--only', metavar='REGEX',
                   help='record only the case ids matching REGEX (debugging;'
                   ' compare lists the rest as missing)')
    p.add_argument('--keep', action='store_true',
                   help='keep the temporary directory (sources, outputs)')
    p = sub.add_parser('compare', help='print every difference of two '
                       'recordings (exit 1 on a failure)')
    p.add_argument('a', metavar='A_DIR')
    p.add_argument('b', metavar='B_DIR')
    p.add_argument('--strict-text', action='store_true',
                   help='exit 1 on text differences too')
    p.add_argument('--max-lines', type=int, default=60,
                   help='lines shown per distinct text difference '
                   '(0: all; default 60)')
    args = parser.parse_args(argv)
    if args.command == 'record':
        return record(args.out_dir, args.only, args.keep)
    return compare(args.a, args.b, args.strict_text, args.max_lines)


if __name__ == '__main__':
    sys.exit(main())
