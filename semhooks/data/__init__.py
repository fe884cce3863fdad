"""Bundled datasets (files only) and the helpers that find them inside the installed package.

The loaders live in :mod:`semhooks.data.loaders` and :mod:`semhooks.relations`; this package only
holds the files, their license notices (next to the files) and ``SHA256SUMS``. Files are read
through :mod:`importlib.resources`, so they are found in wheels, editable installs and zips alike.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importlib.resources.abc is 3.11+; the annotations are never evaluated
    from importlib.resources.abc import Traversable

__all__ = ["data_root", "data_file", "verify_checksums"]


def data_root() -> Traversable:
    """The bundled data folder (a :class:`~importlib.resources.abc.Traversable`)."""
    return resources.files(__name__)


def data_file(relpath: str) -> Traversable:
    """A bundled file by its ``/``-separated path relative to the data folder.

    Raises:
        FileNotFoundError: the file is not bundled (names the path and the data folder).
    """
    node = data_root()
    for part in relpath.split("/"):
        node = node.joinpath(part)
    if not node.is_file():
        raise FileNotFoundError(
            f"bundled data file {relpath!r} not found under {data_root()}; "
            "is semhooks installed with its package data?"
        )
    return node


def verify_checksums() -> dict[str, bool]:
    """Check every file listed in the bundled ``SHA256SUMS`` against its SHA-256 digest.

    Returns:
        ``{relative path: True if the digest matches}`` for every listed file.
    """
    result: dict[str, bool] = {}
    for line in data_file("SHA256SUMS").read_text(encoding="ascii").splitlines():
        if not line.strip():
            continue
        digest, path = line.split(maxsplit=1)
        path = path.strip().removeprefix("./")
        try:
            data = data_file(path).read_bytes()
        except FileNotFoundError:
            result[path] = False
            continue
        result[path] = hashlib.sha256(data).hexdigest() == digest
    return result
