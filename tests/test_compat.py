"""semhooks.compat: every old flat module path still imports, as the very module that replaced
it, with a DeprecationWarning naming the new path."""

from __future__ import annotations

import importlib
import sys

import pytest

import semhooks
from semhooks.compat import MOVED_MODULES


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_path_is_the_new_module_and_warns(old, monkeypatch):
    new = importlib.import_module(MOVED_MODULES[old])
    short = old.rpartition(".")[2]
    # a fresh import of the old path; the package attribute it sets is restored afterwards
    monkeypatch.delitem(sys.modules, old, raising=False)
    namespace = vars(semhooks)  # (getattr would import the old path through __getattr__)
    monkeypatch.setitem(namespace, short, namespace.get(short))
    monkeypatch.delitem(namespace, short)
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to {MOVED_MODULES[old]}"):
        aliased = importlib.import_module(old)
    assert aliased is new
    assert sys.modules[old] is new
