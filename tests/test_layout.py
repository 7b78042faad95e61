# Copyright (c) mmconv contributors. All rights reserved.
"""The package's shape: one direction of dependency, no face reaching into
another module's private names, one place for exit codes.

The import graph is read from the source with :mod:`ast` and holds *every*
import: at module level, inside functions, under ``if TYPE_CHECKING``,
relative and absolute, ``from . import x`` (submodule ``x``),
``importlib.import_module('mmconv.x')``, the facade's lazy table, and the
edge from a submodule to its package's ``__init__`` (importing
``mmconv.formats.x`` runs ``mmconv/formats/__init__.py`` first). That edge is
left out where the package's ``__init__`` itself imports the submodule at
module level: the two are then one import seen from both ends, and the
submodule may take no name from the package (asserted below). A
submodule's own import of an enclosing package (``from . import x``) is
that same edge.

The top package ``mmconv`` is the public facade, above every layer: no
module of the package takes a name from it (so the edge from every
submodule to it carries nothing and is not drawn), it imports at module
level only the base layer, modules that import nothing of the package, and
``registry`` (the MMEngine registration ``import mmconv`` promises), and it
resolves every other public name on first access (``_LAZY`` in
``__getattr__``).
"""
import ast
import os
from collections import defaultdict
from typing import Dict, Iterator, List, NamedTuple, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'mmconv'

#: The layers, lowest first. An import may point to its own layer or a
#: lower one, never a higher one; cycles are refused separately. Names are
#: relative to ``mmconv``: ``'formats'`` is the subpackage and every module
#: in it, ``''`` the facade.
LAYERS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    # import nothing of the package but ``errors``: the errors, the version,
    # the check of the MMEngine install (``stack``)
    ('base', ('errors', 'version', 'stack')),
    # what a conversion is declared with and what it produces: the
    # declarations and their registry, requests and results (``spec``, the
    # ``report`` records), the op library (``ops``, where there is one),
    # rules written to be read both ways (``reverse``: format modules build
    # tables with it)
    ('spec', ('spec', 'report', 'ops', 'reverse')),
    # take formats from the registry in ``spec``, never from
    # ``mmconv.formats``: rename, detect, containers; the file I/O; the
    # MMDetection modules mmconv adds; the check of a result against its
    # target module (``verify``)
    ('engine', ('convert', 'lazy', 'detect', 'containers', 'allowlist',
                'reading',
                'fetching', 'hub', 'dcp', 'writing', 'torchzip',
                'picklescan', 'models', 'verify')),
    # declarations only (see DECLARATIONS_MAY_IMPORT)
    ('formats', ('formats', )),
    # the one module that imports ``mmconv.formats`` (fills the registry)
    ('pipeline', ('pipeline', )),
    # the faces, and what they share (provenance) and register (registry)
    ('faces', ('cli', 'init', 'hooks', 'check', 'provenance', 'registry')),
    ('facade', ('', '__main__')),
)
#: The layers a format module may import (besides the other modules of
#: ``mmconv.formats``): declarations, nothing of the engine or above.
DECLARATIONS_MAY_IMPORT = ('base', 'spec')
#: What ``spec`` holds of the registry (empty until the pipeline fills it).
REGISTRY_NAMES = {'FORMATS', 'FAMILIES', 'TARGETS', 'get_format',
                  'get_target', 'format_names', 'target_names', 'iter_formats'}
#: Modules the facade may import at module level although they import
#: other modules of the package (when they run).
FACADE_EAGER = ('mmconv.registry', )


class Import(NamedTuple):
    """One import of a package module by a package module."""

    source: str  # the importing module
    target: str  # the imported module
    names: Tuple[str, ...]  # names taken from it that are not modules
    line: int
    when: str  # 'module', 'function' or 'typing'


def _modules(root: str = ROOT) -> Dict[str, Tuple[ast.AST, bool]]:
    """``{dotted name: (ast, is a package)}`` of every module of the
    package under ``root``."""
    found = {}
    for folder, dirs, files in os.walk(os.path.join(root, PACKAGE)):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        for name in sorted(files):
            if not name.endswith('.py'):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            package = parts[-1] == '__init__'
            dotted = '.'.join(parts[:-1] if package else parts)
            with open(path) as f:
                found[dotted] = (ast.parse(f.read(), path), package)
    return found


def _is_type_checking(test: ast.AST) -> bool:
    """Whether an ``if`` test is ``TYPE_CHECKING`` (or
    ``typing.TYPE_CHECKING``)."""
    return getattr(test, 'id', getattr(test, 'attr', '')) == 'TYPE_CHECKING'


def _walk(tree: ast.AST) -> Iterator[Tuple[ast.AST, str]]:
    """Every node with when it runs: ``'module'`` (importing the module),
    ``'function'`` (when called) or ``'typing'`` (type checkers only)."""
    stack = [(tree, 'module')]
    while stack:
        node, when = stack.pop()
        yield node, when
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack += [(n, 'typing') for n in node.body]
            stack += [(n, when) for n in node.orelse]
            continue
        inner = 'function' if when == 'module' and isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) \
            else when
        stack += [(n, inner) for n in ast.iter_child_nodes(node)]


def _lazy_table(tree: ast.AST) -> Dict[str, str]:
    """The facade's ``_LAZY = {name: submodule}`` table."""
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
                getattr(t, 'id', '') == '_LAZY' for t in getattr(
                    node, 'targets', [getattr(node, 'target', None)])):
            return ast.literal_eval(node.value)
    return {}


def _imports(module: str, tree: ast.AST, package: bool,
             modules) -> Iterator[Import]:
    """Every import of a package module by ``module``."""
    here = module if package else module.rpartition('.')[0]

    def resolve(name: str, level: int) -> str:
        if not level:
            return name
        base = here.split('.')
        base = base[:len(base) - level + 1]
        return '.'.join(base + ([name] if name else []))

    def found(target: str, names, node, when) -> Iterator[Import]:
        if target == PACKAGE or target.startswith(PACKAGE + '.'):
            assert target in modules, \
                f'{module}:{node.lineno} imports {target}: no such module'
            yield Import(module, target, tuple(names), node.lineno, when)

    for node, when in _walk(tree):
        if isinstance(node, ast.Import):  # a package: its namespace is used
            for alias in node.names:
                names = ['*'] if alias.name in modules and \
                    modules[alias.name][1] else []
                yield from found(alias.name, names, node, when)
        elif isinstance(node, ast.ImportFrom):
            target = resolve(node.module or '', node.level)
            names = [a.name for a in node.names
                     if f'{target}.{a.name}' not in modules]
            yield from found(target, names, node, when)
            for alias in node.names:
                if f'{target}.{alias.name}' in modules:
                    yield from found(f'{target}.{alias.name}', [], node, when)
        elif isinstance(node, ast.Call) and getattr(
                node.func, 'attr', getattr(node.func, 'id', '')) in (
                    'import_module', '__import__'):
            args = node.args
            if not args or not isinstance(args[0], ast.Constant):
                assert module == PACKAGE, (
                    f'{module}:{node.lineno}: an import the layout test '
                    'cannot read; import a literal name')
                continue
            name = args[0].value
            level = len(name) - len(name.lstrip('.'))
            yield from found(resolve(name[level:], level), [], node, when)
    if module == PACKAGE:  # the facade's lazy public names
        for sub in sorted(set(_lazy_table(tree).values())):
            yield Import(module, f'{PACKAGE}.{sub}', (), 0, 'function')


def _all_imports(modules) -> List[Import]:
    """Every import of every module."""
    return [imp for m, (tree, package) in modules.items()
            for imp in _imports(m, tree, package, modules)]


def _graph(modules, imports: List[Import]) -> Dict[str, Set[str]]:
    """``{module: modules it needs}``: the imports, plus the edge from a
    submodule to its package (see the module docstring)."""
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for imp in imports:
        inside = imp.source.startswith(imp.target + '.')
        if imp.target != imp.source and not inside:
            graph[imp.source].add(imp.target)
    for m in modules:
        parent = m.rpartition('.')[0]
        if not parent or parent == PACKAGE:
            continue  # the facade: nothing takes names from it
        loaded_by_parent = any(
            imp.source == parent and imp.target == m and imp.when == 'module'
            for imp in imports)
        if not loaded_by_parent:
            graph[m].add(parent)
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with a cycle (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _one_cycle(graph: Dict[str, Set[str]], component: List[str]
               ) -> List[str]:
    """A shortest cycle through the first module of ``component``."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    return component  # pragma: no cover (a component has a cycle)


def import_cycles(root: str = ROOT) -> List[List[str]]:
    """The import circles of the package under ``root`` (for reports)."""
    modules = _modules(root)
    return _cycles(_graph(modules, _all_imports(modules)))


def _layer(module: str) -> int:
    """The rank of ``module``'s layer in :data:`LAYERS`."""
    name = module[len(PACKAGE) + 1:] if module != PACKAGE else ''
    for rank, (_, members) in enumerate(LAYERS):
        if name in members or name.split('.')[0] in members and name:
            return rank
    raise AssertionError(f'{module} is in no layer: add it to LAYERS in '
                         'tests/test_layout.py')


def _layer_name(module: str) -> str:
    return LAYERS[_layer(module)][0]


def test_no_import_cycles():
    """The graph of every import (lazy and type-only ones included) has no
    cycle."""
    modules = _modules()
    graph = _graph(modules, _all_imports(modules))
    cycles = _cycles(graph)
    assert not cycles, (
        f'{len(cycles)} import circle(s) of {sum(map(len, cycles))} modules;'
        ' one: ' + ' -> '.join(_one_cycle(graph, cycles[0])))


def test_every_import_points_down_the_layers():
    """No import (lazy and type-only ones included) reaches a higher
    layer; format modules import declarations only; the pipeline is the
    one module that imports ``mmconv.formats``."""
    modules = _modules()
    for m in modules:
        _layer(m)
    bad = []
    for imp in _all_imports(modules):
        src, dst = imp.source, imp.target
        if dst == src or src.startswith(dst + '.'):
            continue
        where = f'{src}:{imp.line} ({imp.when}) imports {dst}'
        if _layer(dst) > _layer(src):
            bad.append(f'{where}: {_layer_name(src)} may not import '
                       f'{_layer_name(dst)}')
        elif _layer_name(src) == 'formats' and _layer_name(dst) not in \
                DECLARATIONS_MAY_IMPORT + ('formats', ):
            bad.append(f'{where}: format modules import declarations only '
                       f'({", ".join(DECLARATIONS_MAY_IMPORT)})')
        elif _layer_name(dst) == 'formats' and \
                _layer_name(src) != 'formats' and \
                src != f'{PACKAGE}.pipeline':
            bad.append(f'{where}: only {PACKAGE}.pipeline imports '
                       f'{PACKAGE}.formats (take the registry from it)')
    assert not bad, '; '.join(bad)


def test_faces_read_the_registry_through_the_pipeline():
    """The registry in ``spec`` is full only once ``mmconv.formats`` is
    imported, which the pipeline does: a module above the pipeline takes
    the registry from it, never from ``spec``."""
    modules = _modules()
    bad = [f'{imp.source}:{imp.line} takes {", ".join(sorted(taken))} from '
           f'{imp.target}: import it from {PACKAGE}.pipeline'
           for imp in _all_imports(modules)
           if imp.target == f'{PACKAGE}.spec'
           and _layer(imp.source) > _layer(f'{PACKAGE}.pipeline')
           for taken in [set(imp.names) & REGISTRY_NAMES] if taken]
    assert not bad, '; '.join(bad)


def test_no_module_takes_names_from_a_package_it_is_in():
    """A submodule runs while its package's ``__init__`` is unfinished, so
    it takes no name from it (the facade included)."""
    modules = _modules()
    bad = [f'{imp.source}:{imp.line} takes {", ".join(imp.names) or "*"} '
           f'from {imp.target}'
           for imp in _all_imports(modules)
           if imp.source.startswith(imp.target + '.') and imp.names]
    assert not bad, bad


def test_the_facade_imports_lazily():
    """``mmconv/__init__.py`` imports at module level only the base layer,
    modules that import nothing of the package, and the registration;
    every other public name is imported on first access."""
    modules = _modules()
    imports = _all_imports(modules)
    uses = defaultdict(set)
    for imp in imports:
        if imp.target != imp.source and \
                not imp.source.startswith(imp.target + '.'):
            uses[imp.source].add(imp.target)
    eager = {imp.target for imp in imports
             if imp.source == PACKAGE and imp.when == 'module'}
    bad = sorted(m for m in eager if uses[m] and m not in FACADE_EAGER
                 and _layer_name(m) != 'base')
    assert not bad, f'{PACKAGE}/__init__.py imports {bad} at module ' \
        'level: put their names in _LAZY'
    tree, _ = modules[PACKAGE]
    for name, sub in _lazy_table(tree).items():
        assert f'{PACKAGE}.{sub}' in modules, (name, sub)


def test_no_module_imports_private_names():
    """Faces share the pipeline; none imports another module's ``_name``."""
    modules = _modules()
    bad = [f'{imp.source} imports {name} from {imp.target}'
           for imp in _all_imports(modules) for name in imp.names
           if name.startswith('_') and not name.startswith('__')
           and imp.target != imp.source]
    assert not bad, bad


def test_exit_codes_are_documented_in_one_place():
    """Every error class's exit code is in the errors module's table."""
    from mmconv import errors
    doc = errors.__doc__
    for name in errors.__all__:
        code = getattr(errors, name).exit_code
        assert f'\n{code}  ' in doc or code == 1, name
