# Copyright (c) mmconv contributors. All rights reserved.
"""The one allowlist of objects a checkpoint may name, for every reader
(``torch.load(weights_only=True)`` around mmconv's own loads, the torch-zip
reader, the ``.pkl`` reader): :func:`allowed_global`. numpy and MMEngine
names resolve to validating stand-ins (README "Safety").
"""
import _compat_pickle
import argparse
import contextlib
import pickle
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .picklescan import PickleRefused

__all__ = ['SAFE_GLOBALS', 'PICKLE_ALLOWLIST', 'allowed_global',
           'safe_globals_context', 'RestrictedUnpickler',
           'HISTORY_STATISTICS', 'RefusedValue', 'MalformedValue',
           'standin_error', 'admit_lazy', 'python3_name']


class RefusedValue(PickleRefused, pickle.UnpicklingError):
    """An allowlisted global used with values mmconv does not admit (numpy
    itself might accept them, e.g. an object or structured dtype): refused
    as unsafe (exit 4), like a global not on the allowlist."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f'it uses {name} with {detail}, which mmconv does '
                         'not admit')


class MalformedValue(pickle.UnpicklingError):
    """An allowlisted global given inconsistent values (e.g. fewer bytes
    than its shape needs): a corrupt record."""


class _Frozen(type):
    """Metaclass of the stand-ins: their attributes cannot be changed.

    A pickle can apply ``BUILD`` to any object on its stack, a class it
    names included; for a class without ``__setstate__`` the unpickler then
    sets attributes of the class, process-wide.
    """

    def __setattr__(cls, name: str, value: Any) -> None:
        raise RefusedValue(getattr(cls, '_global', cls.__name__),
                           f'an assignment to its attribute {name!r}')

    def __delattr__(cls, name: str) -> None:
        raise RefusedValue(getattr(cls, '_global', cls.__name__),
                           f'a deletion of its attribute {name!r}')


class _StandIn(metaclass=_Frozen):
    """A callable stand-in for a function a pickle names (no attributes a
    pickle could set)."""

    __slots__ = ()
    _global = ''

    def __repr__(self) -> str:
        return f'<mmconv stand-in for {self._global}>'


# ---------------------------------------------------------------- numpy --

#: Plain numeric dtype codes (``dtype.str`` without the byte order).
_NUMERIC_CODES = frozenset([
    'b1', 'i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8', 'f2', 'f4', 'f8',
    'c8', 'c16'])
#: numpy's names of those dtypes -> their code.
_NUMERIC_NAMES = {
    'bool': 'b1', 'int8': 'i1', 'int16': 'i2', 'int32': 'i4', 'int64': 'i8',
    'uint8': 'u1', 'uint16': 'u2', 'uint32': 'u4', 'uint64': 'u8',
    'float16': 'f2', 'float32': 'f4', 'float64': 'f8', 'complex64': 'c8',
    'complex128': 'c16'}
_DTYPE_SPELLING = re.compile(r'([<>|=]?)([a-z]+[0-9]*)\Z')
_MAX_DIMS = 32  # numpy 1.x NPY_MAXDIMS


def _numeric_code(obj: Any) -> Tuple[str, str]:
    """``(byte order, code)`` of a plain numeric dtype spelling."""
    if isinstance(obj, bytes):
        obj = obj.decode('latin-1')
    match = _DTYPE_SPELLING.match(obj) if isinstance(obj, str) else None
    if match is not None:
        order, code = match.groups()
        code = _NUMERIC_NAMES.get(code, code)
        if code in _NUMERIC_CODES:
            return order or '=', code
    raise RefusedValue('numpy.dtype', f'{str(obj)[:40]!r} (only plain '
                       'numeric dtypes are admitted)')


class _DType(metaclass=_Frozen):
    """Stands in for ``numpy.dtype`` (``dtype('f8', False, True)`` followed
    by ``BUILD (3, '<', None, None, None, -1, -1, 0)`` in a pickle): holds a
    validated plain numeric dtype; :attr:`dtype` is the real one, made
    fresh."""

    __slots__ = ('_code', '_order')
    _global = 'numpy.dtype'

    def __new__(cls, obj: Any, align: Any = False, copy: Any = False
                ) -> '_DType':
        if type(align) not in (bool, int) or type(copy) not in (bool, int):
            raise MalformedValue('malformed numpy dtype record')
        order, code = _numeric_code(obj)
        self = object.__new__(cls)
        self._order, self._code = order, code
        return self

    def __setstate__(self, state: Any) -> None:
        """Admit only the state numpy writes for a plain numeric dtype."""
        if type(state) is not tuple or len(state) != 8 or state[0] != 3:
            raise RefusedValue('numpy.dtype', 'a state other than numpy\'s '
                               'version-3 state of a plain dtype')
        _, order, subarray, names, fields, elsize, alignment, flags = state
        if subarray is not None or names is not None or fields is not None:
            raise RefusedValue('numpy.dtype', 'fields or a subarray (only '
                               'plain numeric dtypes are admitted)')
        if any(type(v) is not int for v in (elsize, alignment, flags)) or \
                (elsize, alignment, flags) != (-1, -1, 0):
            raise RefusedValue('numpy.dtype', f'size/alignment/flags '
                               f'{(elsize, alignment, flags)!r} (a plain '
                               'numeric dtype has (-1, -1, 0))')
        if isinstance(order, bytes):
            order = order.decode('latin-1')
        if order not in ('<', '>', '|', '='):
            raise MalformedValue(f'malformed numpy dtype byte order '
                                 f'{str(order)[:8]!r}')
        self._order = order

    @property
    def dtype(self) -> np.dtype:
        """The real numpy dtype (made fresh from the validated code)."""
        order = '=' if self._order == '|' else self._order
        return np.dtype(self._code).newbyteorder(order)

    def __eq__(self, other: Any) -> bool:
        other = other.dtype if isinstance(other, _DType) else other
        try:
            return self.dtype == other
        except TypeError:
            return False

    def __hash__(self) -> int:
        return hash(self.dtype)

    def __repr__(self) -> str:
        return repr(self.dtype)

    def __reduce__(self) -> Any:
        return self.dtype.__reduce__()


def _real_dtype(obj: Any, name: str) -> np.dtype:
    """The real dtype of a :class:`_DType` a pickle passed as ``obj``."""
    if type(obj) is not _DType:
        raise MalformedValue(f'malformed {name} record: its dtype is a '
                             f'{type(obj).__name__}, not a numpy dtype')
    return obj.dtype


def _shape(value: Any, name: str) -> Tuple[int, ...]:
    """A validated array shape."""
    if type(value) is not tuple or len(value) > _MAX_DIMS or any(
            type(n) is not int or n < 0 for n in value):
        raise MalformedValue(f'malformed {name} record: shape '
                             f'{str(value)[:60]}')
    return value


def _raw(value: Any, nbytes: int, name: str) -> bytes:
    """The raw bytes of a record, which must be exactly ``nbytes`` long."""
    if isinstance(value, str):  # Python 2 pickles (read as latin-1)
        try:
            value = value.encode('latin-1')
        except UnicodeEncodeError:
            raise MalformedValue(f'malformed {name} record: its data is '
                                 'not bytes') from None
    if type(value) not in (bytes, bytearray):
        raise MalformedValue(f'malformed {name} record: its data is a '
                             f'{type(value).__name__}, not bytes')
    if len(value) != nbytes:
        raise MalformedValue(f'malformed {name} record: {len(value)} bytes '
                             f'of data where its shape and dtype need '
                             f'{nbytes}')
    return value


def _nbytes(shape: Tuple[int, ...], dtype: np.dtype) -> int:
    count = 1
    for n in shape:
        count *= n
    return count * dtype.itemsize


class _NDArray(np.ndarray, metaclass=_Frozen):
    """Stands in for ``numpy.ndarray`` (``_reconstruct(ndarray, (0,), b'b')``
    followed by ``BUILD (1, shape, dtype, is_fortran, rawdata)``): a real
    ndarray (of this subclass) whose state is set once, after validation,
    with a fresh plain numeric dtype. It pickles and prints as an
    ``ndarray``."""

    __slots__ = ('_mmconv_built', )
    _global = 'numpy.ndarray'

    def __new__(cls, *args: Any, **kwargs: Any) -> '_NDArray':
        raise RefusedValue('numpy.ndarray', 'a direct construction')

    def __setstate__(self, state: Any) -> None:
        """Set the data once, from a validated plain numeric record."""
        if getattr(self, '_mmconv_built', True) or self.base is not None:
            raise RefusedValue('numpy.ndarray', 'a second state for one '
                               'array')
        self._mmconv_built = True
        if type(state) is not tuple or len(state) != 5 or state[0] != 1:
            raise MalformedValue('malformed numpy array record (not numpy\'s '
                                 'version-1 state)')
        _, shape, dtype, fortran, raw = state
        shape = _shape(shape, 'numpy array')
        dtype = _real_dtype(dtype, 'numpy array')
        if type(fortran) not in (bool, int) or fortran not in (0, 1):
            raise MalformedValue('malformed numpy array record: its order '
                                 'flag is not a bool')
        raw = bytes(_raw(raw, _nbytes(shape, dtype), 'numpy array'))
        np.ndarray.__setstate__(self, (1, shape, dtype, bool(fortran), raw))

    def __reduce__(self) -> Any:
        return self.view(np.ndarray).__reduce__()

    def __reduce_ex__(self, protocol: int) -> Any:
        return self.view(np.ndarray).__reduce_ex__(protocol)

    def __repr__(self) -> str:
        return repr(self.view(np.ndarray))


class _Reconstruct(_StandIn):
    """Stands in for ``numpy.core.multiarray._reconstruct``: only the empty
    array numpy's pickles start from."""

    __slots__ = ()
    _global = 'numpy.core.multiarray._reconstruct'

    def __call__(self, subtype: Any, shape: Any, typecode: Any) -> _NDArray:
        if subtype is not _NDArray:
            raise RefusedValue(self._global, f'subtype '
                               f'{getattr(subtype, "__name__", "?")[:40]}')
        if shape != (0, ) or typecode not in (b'b', 'b'):
            raise MalformedValue('malformed numpy array record '
                                 '(_reconstruct arguments)')
        array = np.ndarray.__new__(_NDArray, (0, ), np.int8)
        array._mmconv_built = False
        return array


class _Scalar(_StandIn):
    """Stands in for ``numpy.core.multiarray.scalar(dtype, bytes)``."""

    __slots__ = ()
    _global = 'numpy.core.multiarray.scalar'

    def __call__(self, dtype: Any, raw: Any) -> np.generic:
        dtype = _real_dtype(dtype, 'numpy scalar')
        raw = _raw(raw, dtype.itemsize, 'numpy scalar')
        return np.frombuffer(raw, dtype=dtype, count=1)[0]


class _FromBuffer(_StandIn):
    """Stands in for ``numpy.core.numeric._frombuffer(buf, dtype, shape,
    order)`` (protocol-5 pickles)."""

    __slots__ = ()
    _global = 'numpy.core.numeric._frombuffer'

    def __call__(self, buf: Any, dtype: Any, shape: Any,
                 order: Any) -> np.ndarray:
        dtype = _real_dtype(dtype, 'numpy array')
        shape = _shape(shape, 'numpy array')
        if order not in ('C', 'F'):
            raise MalformedValue('malformed numpy array record: order '
                                 f'{str(order)[:8]!r}')
        if isinstance(buf, str):
            raise MalformedValue('malformed numpy array record: its data '
                                 'is a str, not bytes')
        raw = bytearray(_raw(buf, _nbytes(shape, dtype), 'numpy array'))
        return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order)


class _Encode(_StandIn):
    """Stands in for ``_codecs.encode(str, 'latin1')``, how protocol-2
    pickles store ``bytes``; no other encoding."""

    __slots__ = ()
    _global = '_codecs.encode'

    def __call__(self, obj: Any, encoding: Any = 'utf-8',
                 errors: Any = 'strict') -> bytes:
        if encoding not in ('latin1', 'latin-1') or errors != 'strict':
            raise RefusedValue(self._global, f'encoding '
                               f'{str(encoding)[:20]!r} (only latin1)')
        if type(obj) is not str:
            raise MalformedValue('malformed bytes record (_codecs.encode of '
                                 f'a {type(obj).__name__})')
        try:
            return obj.encode('latin-1')
        except UnicodeEncodeError:
            raise MalformedValue('malformed bytes record (not latin1 '
                                 'text)') from None


class _EmptyBytes(_StandIn):
    """Stands in for ``builtins.bytes``: only ``bytes()``, how protocol-2
    pickles store ``b''`` (e.g. the data of an empty array)."""

    __slots__ = ()
    _global = 'builtins.bytes'

    def __call__(self, *args: Any) -> bytes:
        if args:
            raise RefusedValue(self._global, 'arguments')
        return b''


# ----------------------------------------------------- other stand-ins --

class Namespace(argparse.Namespace, metaclass=_Frozen):
    """Stands in for ``argparse.Namespace`` (``args`` of MoCo/DINO/DETR
    checkpoints): a real ``Namespace`` (subclass) whose class cannot be
    changed by the pickle; it pickles as ``argparse.Namespace``."""

    _global = 'argparse.Namespace'

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith('__'):
            raise RefusedValue(self._global, f'attribute {name[:40]!r}')
        super().__setattr__(name, value)

    def __reduce_ex__(self, protocol: int) -> Any:
        return argparse.Namespace, (), dict(vars(self))


def exclude_bias_and_norm(param: Any) -> bool:
    """Inert stand-in for VICReg's training-script function of this name.

    VICReg's optimizer param groups hold a reference to the function
    ``exclude_bias_and_norm`` of its training script, so its checkpoints
    name ``__main__.exclude_bias_and_norm`` (or ``main_vicreg.…``). The
    reference is only stored, never called, when converting; it resolves to
    this function instead of importing anything.
    """
    return param.ndim == 1


class YacsConfig(metaclass=_Frozen):
    """Inert stand-in for ``yacs.config.CfgNode``.

    microsoft/Swin-Transformer and microsoft/SimMIM save their yacs
    configuration in every training checkpoint (``config``). A ``CfgNode``
    is a ``dict`` subclass pickled as ``NEWOBJ`` + its items + its
    ``__dict__`` flags (``__immutable__``, ``__new_allowed__``, ...);
    "creating" one here makes a plain ``OrderedDict`` (which both
    weights-only loaders fill item by item), so the configuration reads as
    nested dicts and yacs is never imported.
    """

    _global = 'yacs.config.CfgNode'

    def __new__(cls, *args: Any) -> 'OrderedDict':  # type: ignore[misc]
        return OrderedDict()


# ------------------------------------------------------------- MMEngine --

#: The statistics methods a pickled ``HistoryBuffer`` refers to.
HISTORY_STATISTICS = frozenset(['min', 'max', 'current', 'mean'])
_HISTORY_NAME = 'mmengine.logging.history_buffer.HistoryBuffer'
_HISTORY_KEYS = frozenset(['max_length', '_log_history', '_count_history'])


def _history_array(value: Any) -> np.ndarray:
    """A validated 1-d real-number history of a ``HistoryBuffer``."""
    if not isinstance(value, np.ndarray) or value.ndim != 1 or \
            value.dtype.kind not in 'biuf':
        raise MalformedValue('malformed HistoryBuffer record: its history '
                             'is not a 1-d numeric array')
    return np.array(value)  # a plain ndarray owning a copy


def _mmengine_globals() -> List[Tuple[Any, str]]:
    """MMEngine logging objects stored in ``message_hub`` of its checkpoints.

    A pickled ``HistoryBuffer`` references its statistics functions as
    ``getattr(HistoryBuffer, 'mean')``; ``builtins.getattr`` itself is never
    admitted: the pickle's ``getattr`` only answers those lookups.
    """
    try:
        from mmengine.logging import HistoryBuffer
    except ImportError:  # pragma: no cover - mmengine is a dependency
        return []

    class _HistoryBuffer(HistoryBuffer, metaclass=_Frozen):
        """Stands in for MMEngine's ``HistoryBuffer``: a real one (subclass)
        whose pickled state is validated (two equally long 1-d numeric
        histories, a positive ``max_length``, only MMEngine's own four
        statistics methods); it pickles as ``HistoryBuffer``."""

        _global = _HISTORY_NAME

        def __new__(cls, *args: Any, **kwargs: Any) -> '_HistoryBuffer':
            if args or kwargs:
                raise RefusedValue(_HISTORY_NAME, 'constructor arguments')
            return object.__new__(cls)

        def __init__(self) -> None:
            HistoryBuffer.__init__(self)

        def __setstate__(self, state: Any) -> None:
            if type(state) is not dict or not all(
                    type(k) is str for k in state):
                raise MalformedValue('malformed HistoryBuffer record')
            methods = state.get('statistics_methods', {})
            if set(state) - {'statistics_methods'} != _HISTORY_KEYS:
                raise RefusedValue(_HISTORY_NAME, 'attributes '
                                   f'{sorted(set(state))!r}'[:120])
            if type(methods) is not dict or any(
                    k not in HISTORY_STATISTICS
                    or v is not HistoryBuffer.__dict__[k]
                    for k, v in methods.items()):
                raise RefusedValue(_HISTORY_NAME, 'statistics methods other '
                                   "than MMEngine's min/max/current/mean")
            max_length = state['max_length']
            if type(max_length) is not int or max_length <= 0:
                raise MalformedValue('malformed HistoryBuffer record: '
                                     'max_length is not a positive int')
            logs = _history_array(state['_log_history'])
            counts = _history_array(state['_count_history'])
            if len(logs) != len(counts):
                raise MalformedValue('malformed HistoryBuffer record: its '
                                     'histories differ in length')
            HistoryBuffer.__setstate__(self, {
                'max_length': max_length, '_log_history': logs,
                '_count_history': counts})

        def __reduce_ex__(self, protocol: int) -> Any:
            return HistoryBuffer, (), dict(HistoryBuffer.__getstate__(self))

    class _HistoryGetattr(_StandIn):
        """Stands in for ``builtins.getattr``: answers only
        ``getattr(HistoryBuffer, 'min'|'max'|'current'|'mean')``."""

        __slots__ = ()
        _global = 'builtins.getattr'

        def __call__(self, obj: Any, name: Any) -> Any:
            if (obj is _HistoryBuffer or obj is HistoryBuffer) and \
                    type(name) is str and name in HISTORY_STATISTICS:
                return HistoryBuffer.__dict__[name]
            raise pickle.UnpicklingError(
                f'Unsupported global: GLOBAL builtins.getattr '
                f'({getattr(obj, "__name__", type(obj).__name__)}.'
                f'{str(name)[:40]})')

    return [(_HistoryBuffer, _HISTORY_NAME),
            (_HistoryGetattr(), 'builtins.getattr')]


# -------------------------------------------------------------- registry --

def _numpy_globals() -> List[Tuple[Any, str]]:
    """The stand-ins under every name numpy's pickles use."""
    found = [(_NDArray, 'numpy.ndarray'), (_DType, 'numpy.dtype'),
             (_Encode(), '_codecs.encode'),
             (_EmptyBytes(), 'builtins.bytes')]
    for core in ('numpy.core', 'numpy._core'):
        found += [(_Reconstruct(), f'{core}.multiarray._reconstruct'),
                  (_Scalar(), f'{core}.multiarray.scalar'),
                  (_FromBuffer(), f'{core}.numeric._frombuffer')]
    return found


#: ``(object, pickle name)`` of every global a torch checkpoint may name,
#: passed to ``torch.load(weights_only=True)`` only around mmconv's own
#: loads: ``argparse.Namespace`` (``args`` of MoCo/DINO/DETR checkpoints),
#: numpy arrays, dtypes and scalars (epoch counters, detectron2 arrays)
#: through validating stand-ins, MMEngine's ``HistoryBuffer`` (and only its
#: own statistics functions through ``getattr``; added when a file needs
#: it), yacs ``CfgNode`` (Swin / SimMIM ``config``, as :class:`YacsConfig`).
SAFE_GLOBALS: List[Tuple[Any, str]] = _numpy_globals() + [
    (Namespace, 'argparse.Namespace'), (set, 'builtins.set'),
    (YacsConfig, 'yacs.config.CfgNode')] + [
    (exclude_bias_and_norm, f'{module}.exclude_bias_and_norm')
    for module in ('__main__', 'main_vicreg')]

#: Allowlisted globals whose modules are imported only when a file needs
#: them (importing MMEngine costs start-up time the command lines avoid).
_LAZY_GLOBALS: Dict[str, Callable[[], List[Tuple[Any, str]]]] = {
    _HISTORY_NAME: _mmengine_globals,
}


def admit_lazy(name: str) -> bool:
    """Add the lazily imported allowlist entry ``name``; False if none."""
    loader = _LAZY_GLOBALS.pop(name, None)
    if loader is None:
        return False
    SAFE_GLOBALS.extend(loader())
    return True


#: ``(module, name)`` pairs :class:`RestrictedUnpickler` (``.pkl``) admits:
#: numpy's names (resolved to the stand-ins) and plain containers.
PICKLE_ALLOWLIST = frozenset([
    ('collections', 'OrderedDict'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'),
    ('numpy._core.numeric', '_frombuffer'),
    ('_codecs', 'encode'), ('builtins', 'bytes'),
])


def _lookup(full: str) -> Any:
    """The :data:`SAFE_GLOBALS` object named ``full``, or None."""
    for obj, name in SAFE_GLOBALS:
        if name == full:
            return obj
    return None


def allowed_global(module: str, name: str) -> Any:
    """The object the pickle global ``module.name`` stands for, if it is on
    mmconv's allowlist (:data:`SAFE_GLOBALS`, and lazily imported entries);
    None otherwise."""
    full = f'{module}.{name}'
    if full in _LAZY_GLOBALS:
        admit_lazy(full)
    if full == 'collections.OrderedDict':
        return OrderedDict
    return _lookup(full)


@contextlib.contextmanager
def safe_globals_context() -> Iterator[None]:
    """Context in which ``torch.load(weights_only=True)`` admits exactly
    :data:`SAFE_GLOBALS` besides torch's defaults.

    Globals added process-wide by others are set aside meanwhile (an entry
    of the same name could shadow a stand-in) and restored afterwards;
    nothing of mmconv's stays in torch's allowlist.
    """
    import torch
    ser = torch.serialization
    if not hasattr(ser, 'safe_globals'):  # torch < 2.5: torch's defaults
        yield
        return
    saved = ser.get_safe_globals()
    ser.clear_safe_globals()
    try:
        with ser.safe_globals(list(SAFE_GLOBALS)):
            yield
    finally:
        ser.clear_safe_globals()
        ser.add_safe_globals(saved)


def standin_error(err: BaseException) -> Optional[pickle.UnpicklingError]:
    """The :class:`RefusedValue`/:class:`MalformedValue` behind ``err``
    (``torch.load`` re-raises a stand-in's error as a new
    ``UnpicklingError`` with a longer message), if any."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, (RefusedValue, MalformedValue)):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def python3_name(module: str, name: str) -> Tuple[str, str]:
    """``(module, name)`` of a pickle global as Python 3 names it
    (protocol-2 pickles use Python 2 names)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler admitting only numpy arrays/dtypes/scalars (as validating
    stand-ins) and plain containers."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve a global only if it is on :data:`PICKLE_ALLOWLIST`."""
        module, name = python3_name(module, name)
        if (module, name) in PICKLE_ALLOWLIST:
            return allowed_global(module, name)
        raise pickle.UnpicklingError(
            f'Unsupported global: GLOBAL {module}.{name}')
