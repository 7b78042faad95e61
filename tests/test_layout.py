# Copyright (c) mmconv contributors. All rights reserved.
"""The package's shape: no import cycles, no face reaching into another
module's private names, one place for exit codes."""
import ast
import os

import mmconv

PACKAGE = os.path.dirname(mmconv.__file__)


def _modules():
    """``{dotted module name: ast}`` of every module of the package."""
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3]
            dotted = rel.replace(os.sep, '.').replace('.__init__', '')
            with open(path) as f:
                found[dotted] = ast.parse(f.read())
    return found


def _imports(module: str, tree: ast.AST, modules):
    """``(imported module, names)`` of every intra-package import (module
    level and inside functions; ``if TYPE_CHECKING:`` blocks aside)."""
    package = module if module in modules and any(
        m.startswith(module + '.') for m in modules) else \
        module.rsplit('.', 1)[0]
    typing_only = {id(n) for block in ast.walk(tree)
                   if isinstance(block, ast.If)
                   and getattr(block.test, 'id', '') == 'TYPE_CHECKING'
                   for n in ast.walk(block)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and \
                id(node) not in typing_only:
            base = package.split('.')
            base = base[:len(base) - node.level + 1]
            target = '.'.join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f'{target}.{alias.name}'
                yield (sub if sub in modules else target), alias.name


def test_no_import_cycles():
    """The import graph of the package's modules (package ``__init__``
    files aside, which every submodule import runs) has no cycle."""
    modules = _modules()
    graph = {m: set() for m in modules}
    for m, tree in modules.items():
        for target, _ in _imports(m, tree, modules):
            if target in modules and target != m and \
                    not any(t.startswith(target + '.') for t in modules):
                graph[m].add(target)
    state = {}

    def visit(node, path):
        state[node] = 'open'
        for nxt in graph[node]:
            assert state.get(nxt) != 'open', ' -> '.join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 'done'

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_no_module_imports_private_names():
    """Faces share the pipeline; none imports another module's ``_name``."""
    modules = _modules()
    bad = [f'{m} imports {name} from {target}'
           for m, tree in modules.items()
           for target, name in _imports(m, tree, modules)
           if name.startswith('_') and not name.startswith('__')
           and target != m]
    assert not bad, bad


def test_exit_codes_are_documented_in_one_place():
    """Every error class's exit code is in the errors module's table."""
    from mmconv import errors
    doc = errors.__doc__
    for name in errors.__all__:
        code = getattr(errors, name).exit_code
        assert f'\n{code}  ' in doc or code == 1, name
