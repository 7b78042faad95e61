# Copyright (c) mmconv contributors. All rights reserved.
"""The two test tiers of a parametrised sweep.

``pytest -m "not slow"`` (the fast tier) runs a sweep's representative
cases; the full run (``bash .ci/run``) runs every case, and its light
older-torch legs run ``-m "not slow or sweep"``: every case of a sweep.
"""
from typing import Any, Collection, Iterable, List, Optional

import pytest


def sweep(cases: Iterable[Any], fast: Collection[str],
          ids: Optional[Iterable[str]] = None) -> List[Any]:
    """``cases`` as ``pytest.param``\\ s, those whose id is in ``fast`` in
    the fast tier and the others marked ``slow`` and ``sweep``.

    Args:
        cases: The parameter values; a tuple is one case of several
            arguments.
        fast: Ids of the cases the fast tier runs (each must be a case).
        ids: The cases' ids (default: ``str`` of each value).

    Returns:
        list: The cases, for ``pytest.mark.parametrize``.
    """
    cases = list(cases)
    ids = [str(c) for c in cases] if ids is None else list(ids)
    unknown = set(fast) - set(ids)
    assert not unknown, f'no such case: {sorted(unknown)}'
    beyond = (pytest.mark.slow, pytest.mark.sweep)
    return [pytest.param(*(c if isinstance(c, tuple) else (c, )), id=i,
                         marks=() if i in fast else beyond)
            for c, i in zip(cases, ids)]
