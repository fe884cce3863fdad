"""One conversion of semhooks' values to plain JSON data (dicts, lists, str, int, float, bool, None).

Every JSON the package writes goes through :func:`to_jsonable`: artifact headers and
``atomic_write_json`` (as ``json.dumps``' ``default``), recipe metrics, result ``to_dict``
methods, and the canonical JSON whose sha256 is a cache key (:mod:`semhooks.io.fingerprint`).
The call sites differ only in two choices, which are arguments:

* ``nonfinite``: what a float NaN or +-inf becomes: ``"null"`` (``None``, strict JSON),
  ``"keep"`` (left as is; ``json.dumps`` writes ``NaN``/``Infinity``), or ``"tag"``
  (``{"float": "nan"}``, unambiguous and bit-exact; Python floats only, numpy scalars give
  their raw ``.item()``, which is how cache keys have always been spelled).
* ``arrays``: ``"list"`` (a tensor or array becomes its nested list) or ``"tagged"``
  (``{"tensor" | "array": dtype, "shape": [...], "data": nested list}``, so that two arrays
  with the same numbers but another dtype or shape never share a cache key).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

__all__ = ["to_jsonable"]

NonFinite = Literal["null", "keep", "tag"]
Arrays = Literal["list", "tagged"]


def to_jsonable(
    obj: Any,
    *,
    nonfinite: NonFinite = "null",
    arrays: Arrays = "list",
    unknown: Literal["error", "keep"] = "error",
) -> Any:
    """``obj`` as plain JSON data, recursively.

    Converts tensors and numpy arrays (see ``arrays``), numpy scalars (``.item()``), anything
    else with a ``.tolist()``, mappings (keys become ``str(key)``), lists, tuples and ranges
    (lists), sets (lists sorted by ``repr``), dataclass instances (their fields as a dict) and
    paths (``str``); floats follow ``nonfinite``.

    Args:
        unknown: ``"error"`` raises on any other type; ``"keep"`` returns it unchanged.

    Raises:
        TypeError: a value of another type and ``unknown="error"``.
    """

    def rec(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            if arrays == "tagged":
                return {"tensor": str(x.dtype), "shape": list(x.shape), "data": x.tolist()}
            return rec(x.tolist())
        if isinstance(x, np.ndarray):
            if arrays == "tagged":
                return {"array": str(x.dtype), "shape": list(x.shape), "data": x.tolist()}
            return rec(x.tolist())
        if isinstance(x, np.generic):
            item = x.item()
            return item if nonfinite == "tag" else rec(item)
        if isinstance(x, float) and not math.isfinite(x):
            if nonfinite == "null":
                return None
            return {"float": repr(x)} if nonfinite == "tag" else x
        if x is None or isinstance(x, (str, int, float, bool)):
            return x
        if isinstance(x, Mapping):
            return {str(k): rec(v) for k, v in x.items()}
        if isinstance(x, (list, tuple, range)):
            return [rec(v) for v in x]
        if isinstance(x, (set, frozenset)):
            return sorted((rec(v) for v in x), key=repr)
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {f.name: rec(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, os.PathLike):
            return os.fspath(x)
        if hasattr(x, "tolist"):
            return rec(x.tolist())
        if unknown == "keep":
            return x
        raise TypeError(f"cannot convert a {type(x).__name__} to JSON ({x!r:.60})")

    return rec(obj)
