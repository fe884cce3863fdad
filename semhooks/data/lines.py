"""Reading a bundled or user data file as lines (shared by the loaders)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from semhooks.data import data_file

PathLike = str | os.PathLike[str]


def read_lines(path: Path | None, relpath: str | None) -> tuple[str, list[str]]:
    """Read a user file (``path``) or a bundled one (``relpath``) as lines.

    Returns ``(name for error messages, lines)``. Lines are split on ``"\\n"`` only, because
    ``imdb_labelled.txt`` holds U+0085 (NEL) inside sentences and :meth:`str.splitlines` would
    break those sentences in two. A trailing ``"\\r"`` is dropped (CRLF files) and trailing
    blank lines are removed; blank lines elsewhere are kept so callers can report them.
    """
    if path is not None:
        where = str(path)
        text = path.read_text(encoding="utf-8-sig")
    else:
        assert relpath is not None
        where = f"<bundled semhooks/data/{relpath}>"
        text = data_file(relpath).read_text(encoding="utf-8")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return where, lines


def user_path(value: PathLike, what: str, valid: Sequence[str]) -> Path:
    """``value`` as the path of an existing user file, or a FileNotFoundError listing the
    bundled names (``valid``) it could have been."""
    path = Path(value)
    if not path.is_file():
        choices = ", ".join(repr(v) for v in valid)
        raise FileNotFoundError(
            f"{what} {str(value)!r} is neither a bundled name ({choices}) nor an existing file"
        )
    return path
