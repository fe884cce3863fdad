"""Old module paths, kept importable after the move into wings (deprecated).

semhooks 0.1 was one flat package (``semhooks.model``, ``semhooks.states``, ...). The modules now
live in wings (``semhooks.backend``, ``semhooks.extraction``, ...). ``import semhooks.states``
and ``from semhooks.states import LayerStates`` keep working: the old name is an alias of the
new module (the same module object, so monkeypatching either affects both) and warns once with
:class:`DeprecationWarning`. The public names in :mod:`semhooks` never moved.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED_MODULES", "install"]

MOVED_MODULES: dict[str, str] = {
    "semhooks.model": "semhooks.backend.adapter",
    "semhooks.hooked": "semhooks.backend.hooked",
    "semhooks.states": "semhooks.extraction.states",
    "semhooks.pooling": "semhooks.extraction.pooling",
    "semhooks.spans": "semhooks.extraction.spans",
    "semhooks.distributed": "semhooks.extraction.distributed",
    "semhooks.guards": "semhooks.interventions.guards",
    "semhooks.directions": "semhooks.estimators.directions",
    "semhooks.mi": "semhooks.estimators.mi",
    "semhooks.calibration": "semhooks.studies.calibration",
    "semhooks.probing": "semhooks.studies.probing",
    "semhooks.lexical": "semhooks.studies.lexical",
    "semhooks.vocab": "semhooks.studies.vocab",
    "semhooks.emergence": "semhooks.studies.emergence",
    "semhooks.steering": "semhooks.studies.steering",
    "semhooks.artifacts": "semhooks.io.artifacts",
    "semhooks.fingerprint": "semhooks.io.fingerprint",
    "semhooks.datasets": "semhooks.data.loaders",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolve an old module path to the module that replaced it."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):  # noqa: D102
        return None

    def exec_module(self, module: ModuleType) -> None:  # noqa: D102
        new = MOVED_MODULES[module.__name__]
        warnings.warn(
            f"{module.__name__} moved to {new}; import it from there (or the public name from "
            "semhooks). The old path will be removed in semhooks 0.3.",
            DeprecationWarning,
            stacklevel=2,
        )
        # importlib re-reads sys.modules after exec_module: the alias becomes the new module.
        sys.modules[module.__name__] = importlib.import_module(new)


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
