"""Every code block of the README runs, and prints what the README says it prints.

A ```python block is executed (in a temporary folder); when the next block is ```text, the
captured standard output must equal it. A ```bash block's ``semhooks ...`` lines must parse
with the real CLI parser and its ``make`` targets must exist in the Makefile.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", README, re.S)]


def _python_blocks() -> list[tuple[int, str, str | None]]:
    out = []
    for i, (lang, body) in enumerate(BLOCKS):
        if lang == "python":
            nxt = BLOCKS[i + 1] if i + 1 < len(BLOCKS) else None
            expected = nxt[1] if nxt is not None and nxt[0] == "text" else None
            out.append((i, body, expected))
    return out


def test_the_readme_has_code_to_check():
    assert len(_python_blocks()) >= 2 and any(e for _, _, e in _python_blocks())


@pytest.mark.real
@pytest.mark.parametrize("index", [i for i, _, _ in _python_blocks()])
def test_python_block_runs_and_prints_what_the_readme_shows(index, tmp_path, monkeypatch):
    _, body, expected = next(b for b in _python_blocks() if b[0] == index)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    module = types.ModuleType(f"readme_block_{index}")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    with contextlib.redirect_stdout(out):
        exec(compile(body, f"README.md block {index}", "exec"), module.__dict__)
    if expected is not None:
        assert out.getvalue().strip() == expected.strip()


def test_bash_blocks_name_real_commands():
    from recipes.cli import build_parser

    parser = build_parser()
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    checked = 0
    for lang, body in BLOCKS:
        if lang != "bash":
            continue
        for line in body.splitlines():
            cmd = line.split("#", 1)[0].strip()
            if cmd.startswith("semhooks "):
                parser.parse_args(shlex.split(cmd)[1:])  # SystemExit on a bad command
                checked += 1
            elif cmd.startswith("make "):
                assert cmd.split()[1] in targets, f"README names a missing make target: {cmd}"
                checked += 1
    assert checked >= 5
