# Copyright (c) mmconv contributors. All rights reserved.
"""A static pre-scan of pickle bytes, run before any unpickler
(:func:`scan_pickle`): it simulates the shape of the unpickler's stack,
makes no object and refuses what the unpicklers do not bound (the ``MAX_*``
limits below; README "Safety" lists the checks).
"""
import _compat_pickle
import codecs
import pickle
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = [
    'scan_pickle', 'scan_legacy_torch', 'ScanRules', 'Scan', 'StorageRef',
    'PickleRejected', 'PickleRefused', 'MAX_OPCODES', 'MAX_DEPTH',
    'MAX_UNFOLDED', 'MAX_KEY_NODES', 'MAX_MEMO', 'MAX_INT_BYTES',
    'MAX_BROADCAST'
]

#: Opcodes of one pickle (a 7B-parameter state dict with its optimizer
#: state, ``args`` and MMEngine's ``message_hub`` takes ~10^5).
MAX_OPCODES = 1 << 22
#: Memo slots (the C unpickler allocates up to twice the highest index).
MAX_MEMO = 1 << 22
#: Containers/objects nested in each other (real checkpoints: ~10).
MAX_DEPTH = 100
#: Nodes of one object unfolded into a tree (real checkpoints: ~20 per
#: tensor).
MAX_UNFOLDED = 1 << 22
#: Nodes of one dict key or set member, unfolded.
MAX_KEY_NODES = 64
#: Bytes of one integer.
MAX_INT_BYTES = 256
#: Elements a tensor view may have beyond its storage's (broadcast views
#: with zero strides).
MAX_BROADCAST = 1 << 24

_SHORT = 256  # strings up to this length are decoded (names, keys, ...)
_MAX_INDEX = (1 << 62)  # tensor sizes, strides, offsets, numel

#: Storage locations whose bytes torch writes into the record (``map_location
#: ='cpu'`` reads them to CPU); ``meta`` and anything else are refused.
_LOCATION = re.compile(r'(cpu|cuda|mps|xpu|npu|hpu)(:\d{1,4})?\Z')


class PickleRejected(ValueError):
    """The pickle is corrupt, oversized or not what a checkpoint holds."""


class PickleRefused(Exception):
    """The pickle would change shared objects or hidden attributes."""


@dataclass
class StorageRef:
    """One storage a pickle names through a persistent id."""

    type_name: str
    itemsize: int
    location: str
    numel: int


@dataclass
class Scan:
    """What a scan learnt: where the pickle ends, its storages by key, and
    the root when it is a constant (int, str, ...) or a list of those."""

    end: int
    storages: Dict[str, StorageRef] = field(default_factory=dict)
    value: Any = None
    opcodes: int = 0
    depth: int = 0
    unfolded: int = 1


@dataclass
class ScanRules:
    """How a reader resolves names.

    Attributes:
        resolve (callable): ``resolve(module, name)`` -> the object the
            reader makes of the global, or None where it refuses it.
        pid_arity (int): Persistent ids admitted: 0 = none (``.pkl``), 5 =
            torch zip ``('storage', type, key, location, numel)``, 6 =
            legacy torch (the same plus ``view_metadata``).
        itemsize (callable): ``itemsize(storage_type_object)`` -> bytes per
            element, or None if it is not a storage type.
    """

    resolve: Callable[[str, str], Any]
    pid_arity: int = 0
    itemsize: Callable[[Any], Optional[int]] = lambda obj: None


class _Blob:
    """A string/bytes leaf too long to keep: only its length."""

    __slots__ = ('n', )

    def __init__(self, n: int) -> None:
        self.n = n


# node kinds
_LIST, _DICT, _SET, _TUPLE, _OBJ, _GLOBAL, _PID = range(7)
_KIND_NAMES = ('list', 'dict', 'set', 'tuple', 'object', 'global',
               'storage')
# what BUILD may do to an object (_Node.build)
_NO_BUILD, _BUILD_DICT, _BUILD_ARRAY, _BUILD_DTYPE, _BUILD_HISTORY = range(5)


class _Node:
    """A container, object, global or storage on the simulated stack."""

    __slots__ = ('kind', 'kids', 'name', 'obj', 'build', 'built', 'mapping',
                 'info', 'size', 'depth')

    def __init__(self, kind: int, kids: Optional[list] = None,
                 name: str = '', obj: Any = None) -> None:
        self.kind = kind
        self.kids = [] if kids is None else kids
        self.name = name  # GLOBAL: canonical name; OBJ: its callee's
        self.obj = obj  # GLOBAL: the resolved object; OBJ: callee's
        self.build = _NO_BUILD
        self.built = False
        self.mapping = False  # SETITEM(S) may fill it
        self.info: Any = None
        self.size = 0  # 0: not measured; -1: being measured
        self.depth = 0


def _canonical(module: str, name: str) -> str:
    """``module.name`` as Python 3 names it (protocol-2 names mapped)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f'{module.replace("numpy._core", "numpy.core")}.{name}'


def _ints(item: Any) -> Optional[Tuple[int, ...]]:
    """The ints of a tuple node of int constants (``torch.Size`` too)."""
    if type(item) is not _Node or item.kind != _TUPLE:
        return None
    for value in item.kids:
        if type(value) is not int:
            return None
    return tuple(item.kids)


def _prod(values: Tuple[int, ...]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _length(item: Any) -> Optional[int]:
    """Bytes (an upper bound) a string/bytes leaf or encode result holds."""
    if type(item) in (str, bytes):
        return len(item)
    if type(item) is _Blob:
        return item.n
    if type(item) is _Node and item.kind == _OBJ and \
            isinstance(item.info, _Blob):  # _codecs.encode(...)
        return item.info.n
    return None


def _empty_state(item: Any) -> bool:
    """None, an empty dict, or a pair of those."""
    if item is None:
        return True
    if type(item) is _Node and item.kind == _DICT:
        return not item.kids
    if type(item) is _Node and item.kind == _TUPLE and len(item.kids) == 2:
        return all(_empty_state(k) for k in item.kids)
    return False


def _empty_hooks(item: Any) -> bool:
    """An empty ``OrderedDict()``/dict, as torch pickles backward hooks."""
    if type(item) is not _Node:
        return item is None
    if item.kind == _DICT:
        return not item.kids
    return item.kind == _OBJ and item.mapping and len(item.kids) == 2 \
        and not item.built


#: opcode -> (struct format, size) of its length prefix
_LENGTHS = {0x58: ('<I', 4), 0x8c: ('<B', 1), 0x8d: ('<Q', 8),
            0x55: ('<B', 1), 0x54: ('<i', 4), 0x43: ('<B', 1),
            0x42: ('<I', 4), 0x8e: ('<Q', 8), 0x96: ('<Q', 8)}


class _Scanner:
    """One pass over one pickle."""

    def __init__(self, data: Any, rules: ScanRules) -> None:
        self.data = data
        self.rules = rules
        self.globals: Dict[Tuple[str, str], _Node] = {}
        self.storages: Dict[str, StorageRef] = {}

    # -- errors -----------------------------------------------------------
    def _bad(self, what: str) -> PickleRejected:
        return PickleRejected(f'{what} (pickle byte {self.op_pos})')

    def _refuse(self, what: str) -> PickleRefused:
        return PickleRefused(what)

    # -- reading arguments -------------------------------------------------
    def _take(self, pos: int, n: int, end: int) -> int:
        if n < 0 or pos + n > end:
            raise self._bad(f'declared length {n} runs past the end of the '
                            'data (truncated?)')
        return pos + n

    def _line(self, pos: int, end: int, limit: int = 4096,
              string: bool = False) -> Tuple[Any, int]:
        """A newline-terminated argument; a long ``string`` (STRING,
        UNICODE: up to the end of the data) only as a :class:`_Blob`."""
        if string:
            limit = end - pos
        nl = self.data.find(b'\n', pos, min(end, pos + limit))
        if nl < 0:
            raise self._bad('unterminated text argument (truncated?)')
        if string and nl - pos > _SHORT:
            return _Blob(nl - pos), nl + 1
        return bytes(self.data[pos:nl]), nl + 1

    def _text(self, pos: int, n: int, end: int,
              utf8: bool) -> Tuple[Any, int]:
        new = self._take(pos, n, end)
        if n > _SHORT:
            return _Blob(n), new
        raw = bytes(self.data[pos:new])
        if not utf8:
            return raw, new
        try:
            return raw.decode('utf-8', 'surrogatepass'), new
        except UnicodeDecodeError:
            raise self._bad('string is not UTF-8') from None

    def _int_text(self, text: bytes) -> int:
        if len(text) > 2 * MAX_INT_BYTES + 2:
            raise self._bad('integer too long')
        try:
            return int(text.rstrip(b'L') or b'0')
        except ValueError:
            raise self._bad('malformed integer') from None

    # -- the stack ---------------------------------------------------------
    def _pop(self) -> Any:
        if not self.stack:
            raise self._bad('stack underflow')
        return self.stack.pop()

    def _top(self) -> Any:
        if not self.stack:
            raise self._bad('stack underflow')
        return self.stack[-1]

    def _pop_mark(self) -> list:
        if not self.metastack:
            raise self._bad('no MARK')
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def _key(self, item: Any) -> None:
        """Refuse a dict key / set member bigger than MAX_KEY_NODES."""
        if type(item) is not _Node:
            return
        if item.kind in (_LIST, _DICT, _SET):
            raise self._bad(f'unhashable {_KIND_NAMES[item.kind]} as a dict '
                            'key or set member')
        budget, todo = MAX_KEY_NODES, [item]
        while todo:
            node = todo.pop()
            budget -= 1
            if budget < 0:
                raise self._bad(f'a dict key or set member of more than '
                                f'{MAX_KEY_NODES} nodes (limit)')
            if type(node) is _Node and node.kind != _GLOBAL:
                todo.extend(node.kids)

    # -- globals and calls ----------------------------------------------
    def _global(self, module: str, name: str) -> _Node:
        node = self.globals.get((module, name))
        if node is None:
            obj = self.rules.resolve(module, name)
            if obj is None:
                raise pickle.UnpicklingError(
                    f'Unsupported global: GLOBAL {module}.{name}')
            node = _Node(_GLOBAL, name=_canonical(module, name), obj=obj)
            self.globals[(module, name)] = node
        return node

    def _memo(self, put: bool, idx: int, memo: Dict[int, Any]) -> None:
        """LONG_BINPUT/PUT (``put``) or LONG_BINGET/GET of memo ``idx``."""
        if put:
            if not 0 <= idx < MAX_MEMO:
                raise self._bad(f'memo index {idx} beyond {MAX_MEMO} '
                                '(limit)')
            memo[idx] = self._top()
        elif idx not in memo:
            raise self._bad('memo entry not found')
        else:
            self.stack.append(memo[idx])

    def _callee(self, item: Any) -> _Node:
        if type(item) is not _Node or item.kind != _GLOBAL:
            raise self._bad('call of something that is not a global')
        return item

    def _args(self, item: Any) -> list:
        if type(item) is not _Node or item.kind != _TUPLE:
            raise self._bad('call arguments are not a tuple')
        return item.kids

    def _call(self, callee: _Node, args_node: Any, new: bool) -> Any:
        """The result of ``callee(*args)`` (REDUCE, INST, OBJ) or
        ``callee.__new__(callee, *args)`` (NEWOBJ)."""
        args = self._args(args_node)
        name, obj = callee.name, callee.obj
        node = _Node(_OBJ, [callee, args_node], name=name, obj=obj)
        check = _CALLS.get(name)
        if check is not None:
            return check(self, node, args)
        if not isinstance(obj, type):
            if new:
                raise self._bad(f'NEWOBJ of {name}, which is not a class')
            return node  # a function: its result is not built on
        if obj.__new__ is object.__new__ and \
                getattr(obj, '__setstate__', None) is None:
            node.build = _BUILD_DICT  # a fresh plain instance
        return node

    # -- BUILD ---------------------------------------------------------------
    def _build(self, inst: Any, state: Any) -> None:
        if type(inst) is not _Node:
            raise self._bad('BUILD on a constant')
        if inst.kind == _GLOBAL:
            raise self._refuse(
                f'it sets attributes of {inst.name} itself (BUILD on a class '
                'or function, which would change it for the whole process)')
        if inst.kind != _OBJ:
            raise self._bad(f'BUILD on a {_KIND_NAMES[inst.kind]}')
        if inst.build == _NO_BUILD:
            raise self._refuse(
                f'it sets the state of the result of {inst.name}, which is '
                'not an instance freshly made from a class (BUILD)')
        if inst.built:
            raise self._refuse(f'it sets the state of one {inst.name} twice '
                               '(BUILD)')
        inst.built = True
        inst.kids.append(state)
        if inst.build == _BUILD_ARRAY:
            self._array_state(state)
        elif inst.build == _BUILD_DTYPE:
            self._dtype_state(state)
        else:
            self._dict_state(inst, state)

    def _state_dicts(self, state: Any, pair: bool = True) -> List[_Node]:
        """The dicts of an instance state: ``dict``, or ``(dict, slots)``."""
        if state is None:
            return []
        if type(state) is _Node and state.kind == _DICT:
            return [state]
        if pair and type(state) is _Node and state.kind == _TUPLE and \
                len(state.kids) == 2:
            return [d for part in state.kids
                    for d in self._state_dicts(part, False)]
        raise self._bad('object state is not a dict')

    def _dict_state(self, inst: _Node, state: Any) -> None:
        cls = inst.info if inst.info is not None else inst.obj
        for part in self._state_dicts(state):
            for key, value in zip(part.kids[::2], part.kids[1::2]):
                if type(key) is not str:
                    raise self._bad(f'{inst.name} state has a key that is '
                                    'not a short string')
                if hasattr(cls, key):
                    raise self._refuse(
                        f'its {inst.name} state sets "{key}", which shadows '
                        f'an attribute of {cls.__name__}')
                if inst.build == _BUILD_HISTORY and \
                        key == 'statistics_methods':
                    self._history_methods(inst, value)

    def _history_methods(self, inst: _Node, value: Any) -> None:
        """``HistoryBuffer.__setstate__`` registers these class-wide: only
        its own statistics, each under its own name."""
        if type(value) is not _Node or value.kind != _DICT:
            raise self._bad('HistoryBuffer statistics_methods is not a dict')
        for key, fn in zip(value.kids[::2], value.kids[1::2]):
            if not (type(fn) is _Node and fn.kind == _OBJ
                    and fn.name == 'builtins.getattr'
                    and fn.info == (inst.name, key)):
                raise self._refuse(
                    f'its HistoryBuffer registers "{key}" as a statistics '
                    'method other than HistoryBuffer\'s own')

    def _array_state(self, state: Any) -> None:
        """``ndarray.__setstate__((version, shape, dtype, fortran, data))``:
        the shape must fit the data."""
        parts = state.kids if type(state) is _Node and \
            state.kind == _TUPLE else None
        if parts is None or len(parts) not in (4, 5):
            raise self._bad('malformed numpy array state')
        shape, data = _ints(parts[-4]), parts[-1]
        if shape is None or any(v < 0 or v >= _MAX_INDEX for v in shape):
            raise self._bad('malformed numpy array shape')
        if type(data) is _Node and data.kind == _LIST:
            size = len(data.kids)
        else:
            size = _length(data)
        if size is None or _prod(shape) > size:
            raise self._bad(f'numpy array of shape {shape} has only {size} '
                            'bytes of data')

    def _dtype_state(self, state: Any) -> None:
        """``dtype.__setstate__``: plain (not structured) dtypes only."""
        parts = state.kids if type(state) is _Node and \
            state.kind == _TUPLE else None
        if parts is None or len(parts) not in (8, 9) or \
                any(p is not None for p in parts[2:5]) or \
                (len(parts) == 9 and parts[8] is not None) or \
                not all(type(p) is int and abs(p) < (1 << 31)
                        for p in (parts[0], *parts[5:8])) or \
                parts[1] not in ('<', '>', '|', '='):
            raise self._bad('numpy dtype state is not a plain dtype '
                            '(structured dtypes are not read)')

    # -- persistent ids ---------------------------------------------------
    def _persistent(self, pid: Any) -> _Node:
        arity = self.rules.pid_arity
        if not arity:
            raise self._bad('persistent id in a plain pickle')
        parts = pid.kids if type(pid) is _Node and pid.kind == _TUPLE \
            else None
        if parts is None or len(parts) != arity or \
                parts[0] not in ('storage', b'storage') or \
                type(parts[1]) is not _Node or parts[1].kind != _GLOBAL:
            raise self._bad("persistent id is not torch's ('storage', type, "
                            'key, location, numel)')
        kind, key, location, numel = parts[1:5]
        key = key.decode('latin1') if type(key) is bytes else key
        location = location.decode('latin1') if type(location) is bytes \
            else location
        itemsize = self.rules.itemsize(kind.obj)
        if not itemsize or type(key) is not str or \
                type(location) is not str or type(numel) is not int or \
                not 0 <= numel < _MAX_INDEX // 16:
            raise self._bad('malformed storage persistent id')
        if not _LOCATION.match(location):
            raise self._bad(f'storage on device "{location[:20]}": only '
                            'storages holding their data (cpu, cuda, ...) '
                            'are read, not meta or other devices')
        if arity == 6 and parts[5] is not None:
            view = parts[5]
            if type(view) is not _Node or view.kind != _TUPLE or \
                    len(view.kids) != 3 or \
                    not all(type(v) is int and v >= 0
                            for v in view.kids[1:]) or \
                    view.kids[1] + view.kids[2] > numel:
                raise self._bad('malformed storage view')
        ref = StorageRef(kind.name, itemsize, location, numel)
        old = self.storages.setdefault(key, ref)
        if (old.itemsize, old.numel) != (ref.itemsize, ref.numel):
            raise self._bad(f'storage {key[:20]} is named with two sizes')
        node = _Node(_PID, [pid], name=kind.name)
        node.info = ref
        return node

    # -- the walk ---------------------------------------------------------
    def run(self, start: int, end: int) -> Scan:
        data = self.data
        self.stack: list = []
        self.metastack: List[list] = []
        memo: Dict[int, Any] = {}
        pos, ops = start, 0
        unpack = struct.unpack_from
        while True:
            if pos >= end:
                raise self._bad('pickle data ends before STOP (truncated?)')
            self.op_pos = pos
            code = data[pos]
            pos += 1
            ops += 1
            if ops > MAX_OPCODES:
                raise PickleRejected(f'more than {MAX_OPCODES} pickle '
                                     'opcodes (limit)')
            stack = self.stack
            if code == 0x71:  # BINPUT
                self._take(pos, 1, end)
                memo[data[pos]] = self._top()
                pos += 1
            elif code == 0x68:  # BINGET
                self._take(pos, 1, end)
                idx = data[pos]
                pos += 1
                if idx not in memo:
                    raise self._bad('memo entry not found')
                stack.append(memo[idx])
            elif code in (0x72, 0x6a):  # LONG_BINPUT, LONG_BINGET
                self._take(pos, 4, end)
                idx = unpack('<I', data, pos)[0]
                pos += 4
                self._memo(code == 0x72, idx, memo)
            elif code == 0x94:  # MEMOIZE
                if len(memo) >= MAX_MEMO:
                    raise self._bad('memo beyond its limit')
                memo[len(memo)] = self._top()
            elif code == 0x4b:  # BININT1
                self._take(pos, 1, end)
                stack.append(data[pos])
                pos += 1
            elif code == 0x4d:  # BININT2
                self._take(pos, 2, end)
                stack.append(unpack('<H', data, pos)[0])
                pos += 2
            elif code == 0x4a:  # BININT
                self._take(pos, 4, end)
                stack.append(unpack('<i', data, pos)[0])
                pos += 4
            elif code == 0x28:  # MARK
                self.metastack.append(stack)
                self.stack = []
            elif code in (0x58, 0x8c, 0x8d):  # (SHORT_)BINUNICODE(8)
                fmt, size = _LENGTHS[code]
                self._take(pos, size, end)
                n = unpack(fmt, data, pos)[0]
                value, pos = self._text(pos + size, n, end, True)
                stack.append(value)
            elif code in (0x55, 0x54, 0x43, 0x42, 0x8e, 0x96):
                # SHORT_BINSTRING, BINSTRING, SHORT_BINBYTES, BINBYTES,
                # BINBYTES8, BYTEARRAY8
                fmt, size = _LENGTHS[code]
                self._take(pos, size, end)
                n = unpack(fmt, data, pos)[0]
                value, pos = self._text(pos + size, n, end, False)
                if code in (0x55, 0x54) and type(value) is bytes:
                    value = value.decode('latin1')  # py2 str
                elif code == 0x96:
                    value = _Blob(n)  # a bytearray: mutable, not a key
                stack.append(value)
            elif code == 0x85:  # TUPLE1
                stack.append(_Node(_TUPLE, [self._pop()]))
            elif code == 0x86:  # TUPLE2
                b, a = self._pop(), self._pop()
                stack.append(_Node(_TUPLE, [a, b]))
            elif code == 0x87:  # TUPLE3
                c, b, a = self._pop(), self._pop(), self._pop()
                stack.append(_Node(_TUPLE, [a, b, c]))
            elif code == 0x74:  # TUPLE
                stack = self._pop_mark()
                self.stack.append(_Node(_TUPLE, stack))
            elif code == 0x29:  # EMPTY_TUPLE
                stack.append(_Node(_TUPLE))
            elif code == 0x5d:  # EMPTY_LIST
                stack.append(_Node(_LIST))
            elif code == 0x7d:  # EMPTY_DICT
                node = _Node(_DICT)
                node.mapping = True
                stack.append(node)
            elif code == 0x8f:  # EMPTY_SET
                stack.append(_Node(_SET))
            elif code == 0x6c:  # LIST
                items = self._pop_mark()
                self.stack.append(_Node(_LIST, items))
            elif code == 0x64:  # DICT
                items = self._pop_mark()
                if len(items) % 2:
                    raise self._bad('odd number of items for DICT')
                for k in items[::2]:
                    self._key(k)
                node = _Node(_DICT, items)
                node.mapping = True
                self.stack.append(node)
            elif code == 0x91:  # FROZENSET
                items = self._pop_mark()
                for k in items:
                    self._key(k)
                self.stack.append(_Node(_SET, items))
            elif code in (0x61, 0x65):  # APPEND, APPENDS
                items = [self._pop()] if code == 0x61 else self._pop_mark()
                target = self._top()
                if type(target) is not _Node or target.kind != _LIST:
                    raise self._bad('APPEND to something that is not a list')
                target.kids.extend(items)
            elif code in (0x73, 0x75):  # SETITEM, SETITEMS
                if code == 0x73:
                    v, k = self._pop(), self._pop()
                    items = [k, v]
                else:
                    items = self._pop_mark()
                    if len(items) % 2:
                        raise self._bad('odd number of items for SETITEMS')
                target = self._top()
                if type(target) is not _Node or not target.mapping:
                    raise self._bad('SETITEM on something that is not a '
                                    'dict')
                for k in items[::2]:
                    self._key(k)
                target.kids.extend(items)
            elif code == 0x90:  # ADDITEMS
                items = self._pop_mark()
                target = self._top()
                if type(target) is not _Node or target.kind != _SET:
                    raise self._bad('ADDITEMS to something that is not a '
                                    'set')
                for k in items:
                    self._key(k)
                target.kids.extend(items)
            elif code == 0x4e:  # NONE
                stack.append(None)
            elif code == 0x88:  # NEWTRUE
                stack.append(True)
            elif code == 0x89:  # NEWFALSE
                stack.append(False)
            elif code == 0x47:  # BINFLOAT
                self._take(pos, 8, end)
                stack.append(unpack('>d', data, pos)[0])
                pos += 8
            elif code in (0x8a, 0x8b):  # LONG1, LONG4
                fmt, size = ('<B', 1) if code == 0x8a else ('<i', 4)
                self._take(pos, size, end)
                n = unpack(fmt, data, pos)[0]
                pos += size
                if n > MAX_INT_BYTES:
                    raise self._bad(f'integer of {n} bytes (limit '
                                    f'{MAX_INT_BYTES})')
                new = self._take(pos, n, end)
                stack.append(int.from_bytes(bytes(data[pos:new]), 'little',
                                            signed=True))
                pos = new
            elif code == 0x63:  # GLOBAL
                module, pos = self._line(pos, end)
                name, pos = self._line(pos, end)
                stack.append(self._global(module.decode('utf-8', 'replace'),
                                          name.decode('utf-8', 'replace')))
            elif code == 0x93:  # STACK_GLOBAL
                name, module = self._pop(), self._pop()
                if type(module) is not str or type(name) is not str:
                    raise self._bad('STACK_GLOBAL needs two short strings')
                self.stack.append(self._global(module, name))
            elif code == 0x52:  # REDUCE
                args = self._pop()
                callee = self._callee(self._pop())
                self.stack.append(self._call(callee, args, False))
            elif code == 0x81:  # NEWOBJ
                args = self._pop()
                callee = self._callee(self._pop())
                self.stack.append(self._call(callee, args, True))
            elif code == 0x92:  # NEWOBJ_EX
                kwargs, args = self._pop(), self._pop()
                callee = self._callee(self._pop())
                if type(kwargs) is not _Node or kwargs.kind != _DICT or \
                        kwargs.kids:
                    raise self._bad('NEWOBJ_EX with keyword arguments')
                self.stack.append(self._call(callee, args, True))
            elif code == 0x62:  # BUILD
                state = self._pop()
                self._build(self._top(), state)
            elif code == 0x6f:  # OBJ
                items = self._pop_mark()
                if not items:
                    raise self._bad('OBJ without a class')
                callee = self._callee(items[0])
                self.stack.append(
                    self._call(callee, _Node(_TUPLE, items[1:]), False))
            elif code == 0x69:  # INST
                module, pos = self._line(pos, end)
                name, pos = self._line(pos, end)
                callee = self._global(module.decode('utf-8', 'replace'),
                                      name.decode('utf-8', 'replace'))
                items = self._pop_mark()
                self.stack.append(
                    self._call(callee, _Node(_TUPLE, items), False))
            elif code == 0x51:  # BINPERSID
                stack.append(self._persistent(self._pop()))
            elif code == 0x30:  # POP
                if stack:
                    stack.pop()
                else:
                    self._pop_mark()
            elif code == 0x31:  # POP_MARK
                self._pop_mark()
            elif code == 0x32:  # DUP
                stack.append(self._top())
            elif code == 0x80:  # PROTO
                self._take(pos, 1, end)
                if data[pos] > 5:
                    raise self._bad(f'unsupported pickle protocol '
                                    f'{data[pos]}')
                pos += 1
            elif code == 0x95:  # FRAME
                self._take(pos, 8, end)
                n = unpack('<Q', data, pos)[0]
                pos += 8
                self._take(pos, n, end)
            elif code == 0x2e:  # STOP
                return self._finish(pos, ops)
            elif code in (0x49, 0x4c, 0x46):  # INT, LONG, FLOAT (text)
                text, pos = self._line(pos, end)
                if code == 0x46:
                    try:
                        stack.append(float(text))
                    except ValueError:
                        raise self._bad('malformed float') from None
                elif code == 0x49 and text in (b'00', b'01'):
                    stack.append(text == b'01')
                else:
                    stack.append(self._int_text(text))
            elif code in (0x53, 0x56):  # STRING, UNICODE (text)
                text, pos = self._line(pos, end, string=True)
                if type(text) is _Blob:
                    stack.append(text)
                elif code == 0x56:
                    stack.append(text.decode('raw-unicode-escape',
                                             'replace'))
                else:
                    if len(text) < 2 or text[0] != text[-1] or \
                            text[:1] not in (b'"', b"'"):
                        raise self._bad('malformed STRING')
                    try:
                        raw = codecs.escape_decode(text[1:-1])[0]
                    except ValueError:
                        raise self._bad('malformed STRING') from None
                    stack.append(raw.decode('latin1'))
            elif code in (0x70, 0x67):  # PUT, GET (text)
                text, pos = self._line(pos, end, limit=32)
                idx = self._int_text(text)
                self._memo(code == 0x70, idx, memo)
            elif code == 0x50:  # PERSID (text)
                raise self._bad('text persistent id: not a torch.save file')
            elif code in (0x82, 0x83, 0x84):  # EXT1, EXT2, EXT4
                raise self._bad('extension-registry opcode: not read')
            elif code in (0x97, 0x98):  # NEXT_BUFFER, READONLY_BUFFER
                raise self._bad('out-of-band buffer: not read')
            else:
                raise self._bad(f'unknown pickle opcode 0x{code:02x}')

    def _finish(self, pos: int, ops: int) -> Scan:
        if self.metastack or len(self.stack) != 1:
            raise self._bad('malformed pickle: items left at STOP')
        root = self.stack[0]
        depth, unfolded = 0, 1
        if type(root) is _Node:
            _measure(root, self._bad)
            depth, unfolded = root.depth, root.size
        value = root
        if type(root) is _Node:
            value = None
            if root.kind == _LIST and all(type(k) in (str, int)
                                          for k in root.kids):
                value = list(root.kids)
            elif root.kind == _DICT:
                value = {}
        elif type(root) is _Blob:
            value = None
        return Scan(pos, self.storages, value, ops, depth, unfolded)


def _measure(root: _Node, bad: Callable[[str], Exception]) -> None:
    """Unfolded size and depth of everything reachable from ``root``,
    over the final graph (no recursion); refuse cycles and the limits."""
    root.size = -1
    path: List[Tuple[_Node, int]] = [(root, 0)]
    while path:
        node, i = path[-1]
        kids = node.kids
        while i < len(kids):
            kid = kids[i]
            i += 1
            if type(kid) is _Node and kid.size <= 0:
                if kid.size < 0:
                    raise bad('self-referencing structure')
                path[-1] = (node, i)
                kid.size = -1
                path.append((kid, 0))
                if len(path) > MAX_DEPTH:
                    raise bad(f'containers nested more than {MAX_DEPTH} '
                              'deep (limit)')
                break
        else:
            size, depth = 1, 0
            for kid in kids:
                if type(kid) is _Node:
                    size += kid.size
                    depth = max(depth, kid.depth)
                else:
                    size += 1
            if size > MAX_UNFOLDED:
                raise bad(f'an object that unfolds to more than '
                          f'{MAX_UNFOLDED} nodes (limit; shared references '
                          'count once per path)')
            if depth + 1 > MAX_DEPTH:
                raise bad(f'containers nested more than {MAX_DEPTH} deep '
                          '(limit)')
            node.size, node.depth = size, depth + 1
            path.pop()


# -- admitted callables whose arguments are checked --------------------------
def _tensor(s: _Scanner, node: _Node, args: list) -> _Node:
    """``torch._utils._rebuild_tensor_v2/v3``: a view inside its storage,
    no hooks."""
    v3 = node.name.endswith('_v3')
    if len(args) not in ((7, 8) if v3 else (6, 7)):
        raise s._bad('malformed tensor record')
    storage, offset, size, stride = args[:4]
    size, stride = _ints(size), _ints(stride)
    if type(storage) is not _Node or storage.kind != _PID or \
            type(offset) is not int or size is None or stride is None or \
            len(size) != len(stride) or type(args[4]) is not bool or \
            not all(0 <= v < _MAX_INDEX for v in (offset, *size, *stride)):
        raise s._bad('malformed tensor record')
    if not _empty_hooks(args[5]):
        raise s._refuse('a tensor carries backward hooks')
    metadata = args[7 if v3 else 6] if len(args) > (7 if v3 else 6) \
        else None
    if metadata is not None and not (
            type(metadata) is _Node and metadata.kind == _DICT
            and len(metadata.kids) <= 16
            and all(type(k) is str for k in metadata.kids[::2])
            and all(type(v) is bool for v in metadata.kids[1::2])):
        raise s._bad('malformed tensor metadata')
    numel = storage.info.numel
    extent = 0 if 0 in size else \
        offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1
    if extent > numel:
        raise s._bad(f'tensor view reaches element {extent} of a storage '
                     f'of {numel}')
    if _prod(size) > max(numel, MAX_BROADCAST):
        raise s._bad(f'tensor of {_prod(size)} elements views a storage of '
                     f'{numel}')
    node.info = 'tensor'
    return node


def _parameter(s: _Scanner, node: _Node, args: list) -> _Node:
    """``torch._utils._rebuild_parameter[_with_state]``: a tensor, no hooks,
    no state (attributes set on the parameter)."""
    with_state = node.name.endswith('_with_state')
    if len(args) != (4 if with_state else 3) or \
            type(args[0]) is not _Node or args[0].info != 'tensor' or \
            type(args[1]) is not bool:
        raise s._bad('malformed parameter record')
    if not _empty_hooks(args[2]):
        raise s._refuse('a parameter carries backward hooks')
    if with_state and not _empty_state(args[3]):
        raise s._refuse('it sets attributes on a Parameter (its pickled '
                        'state)')
    node.info = 'tensor'
    return node


def _mapping(s: _Scanner, node: _Node, args: list) -> _Node:
    """``OrderedDict()``/``Counter()`` (and yacs' CfgNode stand-in): a
    fresh dict filled by SETITEMS, its state applied to its ``__dict__``."""
    if args and not (len(args) == 1 and type(args[0]) is _Node
                     and args[0].kind == _DICT):
        raise s._bad(f'malformed {node.name} arguments')
    node.mapping = True
    node.build = _BUILD_DICT
    if node.name == 'yacs.config.CfgNode':
        from collections import OrderedDict
        node.info = OrderedDict  # what the stand-in makes
    return node


def _history(s: _Scanner, node: _Node, args: list) -> _Node:
    """MMEngine's ``HistoryBuffer``: a fresh instance (NEWOBJ)."""
    node.build = _BUILD_HISTORY
    return node


def _getattr(s: _Scanner, node: _Node, args: list) -> _Node:
    """The pickle ``getattr`` (``HistoryBuffer.<statistic>``): a shared
    function, never built on."""
    if len(args) != 2 or type(args[0]) is not _Node or \
            args[0].kind != _GLOBAL or type(args[1]) is not str:
        raise s._bad('malformed getattr')
    node.info = (args[0].name, args[1])
    return node


def _reconstruct(s: _Scanner, node: _Node, args: list) -> _Node:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``: an
    empty array its BUILD fills."""
    shape = _ints(args[1]) if len(args) == 3 else None
    if shape is None or any(v < 0 for v in shape) or _prod(shape) != 0:
        raise s._bad('malformed numpy array (not an empty one to fill)')
    node.build = _BUILD_ARRAY
    return node


def _dtype(s: _Scanner, node: _Node, args: list) -> _Node:
    """``numpy.dtype(spec, align, copy=True)``: a fresh dtype (copy=False
    would return numpy's shared one for BUILD to change)."""
    if len(args) != 3 or type(args[0]) not in (str, bytes) or \
            len(args[0]) > 64 or type(args[1]) not in (bool, int) or \
            type(args[2]) not in (bool, int) or args[2] != 1:
        raise s._bad('malformed numpy dtype (not a fresh copy)')
    node.build = _BUILD_DTYPE
    return node


def _scalar(s: _Scanner, node: _Node, args: list) -> _Node:
    """``numpy.core.multiarray.scalar(dtype, data)``."""
    if len(args) not in (1, 2):
        raise s._bad('malformed numpy scalar')
    return node


def _frombuffer(s: _Scanner, node: _Node, args: list) -> _Node:
    """``numpy.core.numeric._frombuffer(buf, dtype, shape, order)``."""
    shape = _ints(args[2]) if len(args) == 4 else None
    size = _length(args[0]) if len(args) == 4 else None
    if shape is None or size is None or any(v < 0 for v in shape) or \
            _prod(shape) > size:
        raise s._bad('malformed numpy buffer')
    return node


def _encode(s: _Scanner, node: _Node, args: list) -> _Node:
    """``_codecs.encode(text, 'latin1')``: how protocol 2 pickles bytes."""
    if len(args) not in (1, 2) or _length(args[0]) is None or \
            type(args[0]) is bytes or \
            (len(args) == 2 and args[1] not in ('latin1', 'latin-1')):
        raise s._bad('malformed _codecs.encode (only latin1 is read)')
    node.info = _Blob(_length(args[0]))
    return node


def _bytes(s: _Scanner, node: _Node, args: list) -> _Node:
    """``bytes()``: how protocol 2 pickles ``b''``."""
    if args:
        raise s._bad('malformed bytes()')
    node.info = _Blob(0)
    return node


def _set(s: _Scanner, node: _Node, args: list) -> _Node:
    """``set(items)``: every member hashed."""
    if len(args) > 1 or (args and (type(args[0]) is not _Node
                                   or args[0].kind != _LIST)):
        raise s._bad('malformed set')
    for k in (args[0].kids if args else []):
        s._key(k)
    return node


def _size(s: _Scanner, node: _Node, args: list) -> _Node:
    """``torch.Size(ints)``: kept as the tuple it is."""
    ints = _ints(args[0]) if len(args) == 1 else None
    if ints is None or any(not -1 <= v < _MAX_INDEX for v in ints):
        raise s._bad('malformed torch.Size')
    return _Node(_TUPLE, list(ints))


def _device(s: _Scanner, node: _Node, args: list) -> _Node:
    """``torch.device('cuda', 0)``: a short name and an optional index."""
    if not 1 <= len(args) <= 2 or type(args[0]) is not str or \
            len(args[0]) > 32 or (len(args) == 2 and (
                type(args[1]) is not int or not 0 <= args[1] < 1 << 16)):
        raise s._bad('malformed torch.device')
    return node


def _not_called(s: _Scanner, node: _Node, args: list) -> _Node:
    """Classes checkpoints never call directly (``numpy.ndarray(shape)``
    would allocate the shape)."""
    raise s._bad(f'call of {node.name}: not how a checkpoint pickles it')


_CALLS: Dict[str, Callable[[_Scanner, _Node, list], Any]] = {
    'numpy.ndarray': _not_called,
    'torch._utils._rebuild_tensor_v2': _tensor,
    'torch._utils._rebuild_tensor_v3': _tensor,
    'torch._utils._rebuild_parameter': _parameter,
    'torch._utils._rebuild_parameter_with_state': _parameter,
    'collections.OrderedDict': _mapping,
    'collections.Counter': _mapping,
    'yacs.config.CfgNode': _mapping,
    'mmengine.logging.history_buffer.HistoryBuffer': _history,
    'builtins.getattr': _getattr,
    'numpy.core.multiarray._reconstruct': _reconstruct,
    'numpy.dtype': _dtype,
    'numpy.core.multiarray.scalar': _scalar,
    'numpy.core.numeric._frombuffer': _frombuffer,
    '_codecs.encode': _encode,
    'builtins.bytes': _bytes,
    'builtins.set': _set,
    'torch.Size': _size,
    'torch.device': _device,
}


def scan_pickle(data: Any, rules: ScanRules, start: int = 0,
                end: Optional[int] = None) -> Scan:
    """Scan one pickle of ``data[start:end]`` (bytes, bytearray or mmap).

    Args:
        data: The bytes (not copied; only short strings are read out).
        rules (ScanRules): What the reader admits.
        start (int): Offset of the pickle's first opcode.
        end (int, optional): Offset the pickle must end before.

    Returns:
        Scan: Where it ends, the storages it names, a constant root.

    Raises:
        PickleRejected: Corrupt, oversized or not a checkpoint's pickle.
        PickleRefused: It would change shared objects or attributes.
        pickle.UnpicklingError: A global the reader does not admit.
    """
    return _Scanner(data, rules).run(start, len(data) if end is None
                                     else min(end, len(data)))


#: ``torch.save``'s legacy format: its magic number and protocol version.
_LEGACY_MAGIC, _LEGACY_PROTOCOL = 0x1950a86a20f9469cfc6c, 1001


def scan_legacy_torch(data: Any, rules: ScanRules) -> Scan:
    """Scan a legacy (pre-1.6, non-zip) ``torch.save`` file: its header
    pickles, the main pickle (``rules.pid_arity`` 6), the storage keys, and
    that the storages fit the bytes after them (torch allocates each at its
    declared size before reading it)."""
    plain = ScanRules(rules.resolve)
    head = scan_pickle(data, plain)
    if head.value != _LEGACY_MAGIC:
        raise PickleRejected('not a torch.save file (no magic number)')
    version = scan_pickle(data, plain, head.end)
    if version.value != _LEGACY_PROTOCOL:
        raise PickleRejected('unsupported legacy torch file version')
    info = scan_pickle(data, plain, version.end)
    main = scan_pickle(data, rules, info.end)
    keys = scan_pickle(data, plain, main.end)
    if not isinstance(keys.value, list) or \
            not all(type(k) is str for k in keys.value) or \
            len(set(keys.value)) != len(keys.value):
        raise PickleRejected('malformed legacy storage key list')
    need = 0
    for key in keys.value:
        ref = main.storages.get(key)
        if ref is None:
            raise PickleRejected(f'legacy storage {key[:20]} is not named '
                                 'by the pickle')
        need += 8 + ref.numel * ref.itemsize
    if need > len(data) - keys.end:
        raise PickleRejected(f'legacy storages need {need} bytes, the file '
                             f'has {len(data) - keys.end} left (truncated?)')
    return main
