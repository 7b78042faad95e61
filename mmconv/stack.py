# Copyright (c) mmconv contributors. All rights reserved.
"""The MMEngine requirement, checked when mmconv is imported and used
rather than declared at install time.

MMEngine ships as ``mmengine`` (OpenMMLab) and as ``onedl-mmengine`` (the
maintained fork; the same ``mmengine`` module), so ``setup.py`` requires
neither: a hard requirement on one would install it over the other. The
conversion core needs no MMEngine; ``mmconv check``, ``SelfSupPretrained``
and the load-check hook do. Only the file system is read here (no
``importlib.metadata``, no MMEngine import), so ``import mmconv`` stays
fast.
"""
import importlib.util
import os
import re
import sys
from typing import Optional, Tuple

from .errors import MMConvError

__all__ = ['MMENGINE_MIN', 'MMEngineError', 'mmengine_version',
           'check_mmengine', 'require_mmengine']

#: The oldest MMEngine mmconv works with.
MMENGINE_MIN = (0, 10)
#: Distributions that provide the ``mmengine`` module.
_DISTRIBUTIONS = ('mmengine', 'onedl_mmengine', 'mmengine_lite')
_INSTALL = ("pip install 'mmconv[openmmlab]' (OpenMMLab's mmengine) or "
            "'mmconv[onedl]' (onedl-mmengine)")


class MMEngineError(MMConvError, ImportError):
    """MMEngine is missing or older than :data:`MMENGINE_MIN`."""

    exit_code = 1


def _parse(version: str) -> Tuple[int, ...]:
    """``'0.10.7'`` -> ``(0, 10, 7)`` (leading numeric parts only)."""
    parts = []
    for part in version.split('.'):
        digits = re.match(r'\d+', part)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def mmengine_version() -> Optional[str]:
    """The installed MMEngine's version; ``''`` when the module is there but
    its version cannot be read; None when it is not installed."""
    module = sys.modules.get('mmengine')
    if module is not None:  # already imported (e.g. by a config's runner)
        return str(getattr(module, '__version__', ''))
    try:
        spec = importlib.util.find_spec('mmengine')
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    package = list(spec.submodule_search_locations)[0]
    site = os.path.dirname(package)
    try:
        names = os.listdir(site)
    except OSError:
        names = []
    for name in sorted(names):
        stem, _, ext = name.rpartition('.')
        dist, _, version = stem.partition('-')
        if ext in ('dist-info', 'egg-info') and \
                dist.lower() in _DISTRIBUTIONS and version:
            return version
    try:  # a source checkout: mmengine/version.py holds the literal
        with open(os.path.join(package, 'version.py')) as f:
            found = re.search(r"__version__ = '([^']+)'", f.read())
    except OSError:
        found = None
    return found.group(1) if found else ''


def check_mmengine() -> None:
    """At import: refuse an MMEngine older than :data:`MMENGINE_MIN` (none
    at all is fine: the conversion core does not need it).

    Raises:
        MMEngineError: The installed MMEngine is too old.
    """
    version = mmengine_version()
    if version and _parse(version) < MMENGINE_MIN:
        minimum = '.'.join(map(str, MMENGINE_MIN))
        raise MMEngineError(
            f'mmconv needs MMEngine>={minimum}, found {version}: upgrade it '
            f"(pip install 'mmengine>={minimum}' or onedl-mmengine)")


def require_mmengine(purpose: str) -> None:
    """Before ``purpose`` (e.g. ``'mmconv check'``) uses MMEngine.

    Raises:
        MMEngineError: MMEngine is not installed (one line, with the fix).
    """
    if mmengine_version() is None:
        minimum = '.'.join(map(str, MMENGINE_MIN))
        raise MMEngineError(f'{purpose} needs MMEngine>={minimum}, which is '
                            f'not installed: {_INSTALL}')
    check_mmengine()
