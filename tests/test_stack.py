# Copyright (c) mmconv contributors. All rights reserved.
"""The MMEngine requirement, checked by mmconv itself (``mmconv.stack``)
instead of declared at install time: either distribution (``mmengine``,
``onedl-mmengine``) is found and its version read without importing it;
none or a too old one gives one line with the fix."""
import importlib.metadata
import subprocess
import sys

import pytest

import mmconv.stack
from mmconv.cli import main
from mmconv.stack import (MMEngineError, check_mmengine, mmengine_version,
                          require_mmengine)


def _site(tmp_path, dist_info: str = None, version_py: str = None):
    """A site directory holding an ``mmengine`` package (and the
    distribution's ``.dist-info`` directory)."""
    package = tmp_path / 'mmengine'
    package.mkdir(parents=True)
    (package / '__init__.py').write_text('')
    if version_py:
        (package / 'version.py').write_text(
            f"__version__ = '{version_py}'\n")
    if dist_info:
        (tmp_path / f'{dist_info}.dist-info').mkdir()
    return str(tmp_path)


@pytest.fixture
def only_site(monkeypatch):
    """Make ``mmengine`` resolve in a given site directory only."""
    def use(site: str) -> None:
        monkeypatch.delitem(sys.modules, 'mmengine', raising=False)
        monkeypatch.setattr(sys, 'path', [site] + sys.path)
    return use


def test_version_of_the_installed_mmengine():
    """The version read from the file system is the one its distribution
    (whichever of the two owns the ``mmengine`` module here) declares."""
    versions = {}
    for dist in ('mmengine', 'onedl-mmengine'):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    assert len(versions) == 1, versions  # one, never both over each other
    code = ('import sys; from mmconv.stack import mmengine_version; '
            'print(mmengine_version()); print("mmengine" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [next(iter(versions.values())), 'False']  # not imported


@pytest.mark.parametrize('dist_info, expected', [
    ('onedl_mmengine-0.10.12', '0.10.12'), ('mmengine-0.10.7', '0.10.7'),
    ('mmengine_lite-0.10.4', '0.10.4')])
def test_version_from_either_distribution(dist_info, expected, tmp_path,
                                          only_site):
    only_site(_site(tmp_path, dist_info=dist_info))
    assert mmengine_version() == expected
    check_mmengine()


def test_source_checkout_and_unknown_version(tmp_path, only_site):
    """No distribution: ``mmengine/version.py``; nothing readable: ``''``
    (accepted: mmconv does not refuse what it cannot read)."""
    only_site(_site(tmp_path / 'a', version_py='0.10.5'))
    assert mmengine_version() == '0.10.5'
    only_site(_site(tmp_path / 'b'))
    assert mmengine_version() == ''
    check_mmengine()


def test_too_old_mmengine_is_refused(tmp_path, only_site):
    only_site(_site(tmp_path, dist_info='mmengine-0.9.1'))
    with pytest.raises(ImportError) as err:
        check_mmengine()
    assert isinstance(err.value, MMEngineError)
    message = str(err.value)
    assert '\n' not in message and '0.9.1' in message and '>=0.10' in message


def test_missing_mmengine(monkeypatch, capsys):
    """No MMEngine: ``mmconv check`` exits 1 with one line naming both
    extras (the conversion core does not need it)."""
    monkeypatch.setitem(sys.modules, 'mmengine', None)
    assert mmconv.stack.mmengine_version() is None
    with pytest.raises(MMEngineError):
        require_mmengine('x')
    assert main(['check', 'any_config.py']) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: mmconv check ')
    assert "mmconv[openmmlab]" in err and "mmconv[onedl]" in err
