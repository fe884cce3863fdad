"""semhooks.io.to_jsonable: the one JSON conversion, checked against the four helpers it replaced.

The references below are the replaced private helpers, kept verbatim as oracles: the cache-key
form (fingerprint) must give the same bytes, so no cached or resumed result is orphaned, and
the other forms must give the same documents.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from semhooks.io.fingerprint import content_sha256
from semhooks.io.jsonable import to_jsonable

CONFIGS = {
    "recipe_config": {
        "layers": [0, 3, 29],
        "pool": "mean",
        "site": "resid_post",
        "seed": 0,
        "lr": 1e-3,
        "temperature": 0.07,
        "labels": ("neg", "pos"),
        "n": None,
        "flag": True,
        7: "int key",
    },
    "nonfinite": {
        "nan": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
        "np_nan": np.float64("nan"),
        "np_int": np.int64(5),
        "np_bool": np.bool_(True),
        "np_f32": np.float32(0.1),
    },
    "arrays": {
        "t32": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7,
        "t16": torch.tensor([1.5, float("nan")], dtype=torch.float16),
        "ti": torch.tensor([[1, 2]]),
        "a": np.linspace(0, 1, 5),
        "ai": np.arange(4, dtype=np.int32),
        "r": range(3),
    },
    "texts": ["ab", "c", "\u00e9\u4e2d", ""],
    "nested": [{"b": [1, (2, 3.25)], "a": {"x": [None, 1e300]}}],
}

# content_sha256 of each config, computed with the helper before the merge (fingerprint._plain)
GOLDEN = {
    "recipe_config": "e96e2e4802767305d726968d8ef2a0cf6b866654a6e963d980d1df2623507ed9",
    "nonfinite": "847594d1af27ce591011063810245ffc22215647154bef139be7d97ebc660b60",
    "arrays": "d6e0e8ca53a6ab2823039b3924d23061a78c479f36471423b6d604495dd34746",
    "texts": "643fed857fadaecd933b92768a2b8810c4b75e1ddb5802f679e48699f53b0ded",
    "nested": "4dc025cde3428ba40194b2c9e6c14b6fdaec417894597d120efe5f4890a436b4",
}


def old_fingerprint_plain(obj):
    if isinstance(obj, torch.Tensor):
        return {"tensor": str(obj.dtype), "shape": list(obj.shape), "data": obj.tolist()}
    if isinstance(obj, np.ndarray):
        return {"array": str(obj.dtype), "shape": list(obj.shape), "data": obj.tolist()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"float": repr(obj)}
    if isinstance(obj, dict):
        return {str(k): old_fingerprint_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, range)):
        return [old_fingerprint_plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(type(obj).__name__)


def old_recipes_jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): old_recipes_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [old_recipes_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return old_recipes_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def old_emergence_jsonable(a):
    if a.ndim == 1:
        return [None if not np.isfinite(v) else float(v) for v in a]
    return [old_emergence_jsonable(row) for row in a]


def old_artifacts_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def canonical(plain):
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cache_keys_keep_their_bytes(name):
    cfg = CONFIGS[name]
    new = to_jsonable(cfg, nonfinite="tag", arrays="tagged")
    assert canonical(new) == canonical(old_fingerprint_plain(cfg))
    assert content_sha256(cfg) == GOLDEN[name]


@pytest.mark.parametrize("name", ["recipe_config", "nonfinite", "texts", "nested"])
def test_recipe_metrics_are_written_as_before(name):
    cfg = (
        {k: v for k, v in CONFIGS[name].items()}
        if isinstance(CONFIGS[name], dict)
        else CONFIGS[name]
    )
    new = to_jsonable(cfg, unknown="keep")
    assert json.dumps(new, sort_keys=True) == json.dumps(old_recipes_jsonable(cfg), sort_keys=True)


def test_recipe_metrics_with_arrays_are_written_as_before():
    cfg = {k: v for k, v in CONFIGS["arrays"].items() if k != "r"}  # the old one kept ranges
    new = to_jsonable(cfg, unknown="keep")
    assert json.dumps(new, sort_keys=True) == json.dumps(old_recipes_jsonable(cfg), sort_keys=True)


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 2)])
def test_emergence_arrays_are_written_as_before(shape):
    rng = np.random.default_rng(0)
    a = rng.normal(size=shape)
    a.flat[1] = np.nan
    a.flat[-1] = np.inf
    assert to_jsonable(a) == old_emergence_jsonable(a)
    b = a.astype(np.float32)
    assert to_jsonable(b) == old_emergence_jsonable(b)


def test_artifact_headers_are_written_as_before(tmp_path):
    doc = {
        "t": torch.tensor([[1.0, float("nan")]]),
        "a": np.arange(3),
        "s": np.float32(2.5),
        "p": tmp_path / "x",
        "n": [1, {"k": (2, 3)}],
    }
    new = json.dumps(doc, sort_keys=True, default=lambda o: to_jsonable(o, nonfinite="keep"))
    old = json.dumps(doc, sort_keys=True, default=old_artifacts_default)
    assert new == old


def test_sets_dataclasses_and_unknown_types():
    @dataclasses.dataclass
    class Cfg:
        k: int
        xs: tuple[float, ...]

    assert to_jsonable({"s": {3, 1, 2}, "c": Cfg(2, (1.0, math.nan))}) == {
        "s": [1, 2, 3],
        "c": {"k": 2, "xs": [1.0, None]},
    }
    with pytest.raises(TypeError, match="cannot convert a object to JSON"):
        to_jsonable({"x": object()})
    marker = object()
    assert to_jsonable([marker], unknown="keep") == [marker]
