"""The notebooks as source: generated from notebooks/build.py, and free of the habits that
hide problems from a reader (silenced warnings, hard-coded /tmp paths, raw object dumps).

Executing them is ``make test``'s job (nbmake); these checks are static and fast.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

# notebooks/build.py needs nbformat (the dev extra); the TL 3.x environment has none.
pytest.importorskip("nbformat")

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"


def _built() -> dict[str, list[tuple[str, str]]]:
    spec = importlib.util.spec_from_file_location("notebooks_build", FOLDER / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.NOTEBOOKS


BUILT = _built()


def _code(name: str) -> list[str]:
    return [src for kind, src in BUILT[name] if kind == "code"]


def test_every_notebook_is_generated_from_build_py():
    on_disk = {p.stem for p in FOLDER.glob("*.ipynb")}
    assert on_disk == set(BUILT)
    for name, cells in BUILT.items():
        nb = json.loads((FOLDER / f"{name}.ipynb").read_text())
        sources = [("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
                   for c in nb["cells"]]  # fmt: skip
        assert sources == [src for _, src in cells], f"{name}: run python notebooks/build.py"


@pytest.mark.parametrize("name", sorted(BUILT))
def test_notebooks_do_not_silence_warnings_or_write_to_fixed_tmp_paths(name):
    for src in _code(name):
        assert "filterwarnings" not in src and "simplefilter" not in src, src
        assert not re.search(r"""["']/tmp\b""", src), src


@pytest.mark.parametrize("name", sorted(BUILT))
def test_notebooks_print_summaries_not_raw_objects(name):
    for src in _code(name):
        # print(x) of a bare name dumps a repr; print a table or an f-string instead
        assert not re.search(r"^\s*print\(\s*[A-Za-z_]\w*\s*\)\s*$", src, re.M), src
        assert "else res)" not in src, src


def test_a_steer_is_named_for_what_it_does():
    names = [m.group(1) for name in BUILT for src in _code(name)
             for m in re.finditer(r"(\w+)\s*=\s*(?:sh\.)?Steer\(", src)]  # fmt: skip
    assert names and "swap" not in names, names
