"""Provenance and atomic artifact I/O: safetensors for tensors, JSON for metadata.

Every learned artifact in semhooks (LayerStates, LREs, concepts, probes, adapters) is one
safetensors file whose header carries a JSON document under the key ``"semhooks"``: the
artifact kind, its format version, the provenance of the model that produced it and any
hyper-parameters. Writes go to a temporary file in the same folder, are flushed to disk and
then renamed over the target, so a crash half way through a save leaves the previous file
intact; a stale temporary file of a killed save is removed by the next save of that target.

Loads fail closed: an artifact must carry two checksums, ``tensors_sha256`` (every tensor's
name, dtype, shape and bytes) and ``metadata_sha256`` (the header document that says what
the tensors mean: layers, site, pooling, token selection, provenance). A missing, null or
wrong checksum is an :class:`ArtifactError` unless the caller passes ``verify=False``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.util
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from semhooks.io.jsonable import to_jsonable
from semhooks.version import __version__

FORMAT_VERSION = 1
_META_KEY = "semhooks"


class ArtifactError(ValueError):
    """A file is not a readable semhooks artifact, or does not fit the model at hand."""


def semhooks_version() -> str:
    return __version__


def source_sha256(package: str = "semhooks") -> str:
    """sha256 of an importable package's Python source: every ``.py`` file under it, by
    relative path and bytes.

    Part of every resume and cache key (recipe artifacts, shard folders): the version string
    stays the same across code changes that move results (how relation prompts are split,
    say), so a folder made by other code is recomputed, not reused. Read afresh on every
    call (a few milliseconds), so an edited, reloaded module is seen.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{package!r} is not an importable package")
    digest = hashlib.sha256()
    for root in map(Path, spec.submodule_search_locations):
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.{socket.gethostname()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(target: Path, *, max_age_s: float = 3600.0) -> list[Path]:
    """Delete temporary files left beside ``target`` by saves that were killed.

    A temporary file is stale when the process that wrote it (its pid is in the name, with
    the host) is gone, or, for a name without a pid, when it is older than ``max_age_s``.
    Files of live writers and of other hosts are left alone. Returns what was removed.
    """
    removed: list[Path] = []
    prefix, mine = f".{target.name}.", _tmp_prefix(target)
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for p in candidates:
        if not p.name.endswith(".tmp"):
            continue
        rest = p.name[len(mine) :] if p.name.startswith(mine) else None
        pid_text = rest.split(".", 1)[0] if rest is not None else ""
        try:
            if rest is not None and pid_text.isdigit():
                stale = not _alive(int(pid_text))
            elif rest is None and "-" not in p.name[len(prefix) :].split(".", 1)[0]:
                stale = time.time() - p.stat().st_mtime > max_age_s  # an older semhooks' name
            else:
                stale = False  # another host's writer, or a name we do not know
            if stale:
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name carries the host and pid, so the next save of the same target
    removes what a killed writer left behind (:func:`remove_stale_temporaries`).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(
        prefix=f"{_tmp_prefix(target)}{os.getpid()}.", suffix=".tmp", dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(obj: Any) -> Any:
    """``json.dumps``' fallback for what JSON has no type for (tensors, arrays, paths...);
    NaN stays NaN, as ``json.dumps`` writes a plain float."""
    return to_jsonable(obj, nonfinite="keep")


def save_artifact(
    path: str | os.PathLike[str],
    kind: str,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, Any],
) -> Path:
    """Write ``tensors`` and a JSON ``metadata`` document as one safetensors file, atomically."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "semhooks_version": semhooks_version(),
        "saved_at": now_iso(),
        **metadata,
        "tensors_sha256": tensors_digest(cpu),
    }
    # the digest is taken over the document exactly as a load will read it back
    header = json.loads(json.dumps(header, default=_json_default))
    header["metadata_sha256"] = metadata_digest(header)
    blob = save(cpu, metadata={_META_KEY: json.dumps(header)})
    atomic_write_bytes(path, blob)
    return Path(path)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_json(path: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """A JSON document (a result saved with ``save``) as a dict; anything else, including a
    safetensors file, invalid JSON, a list or a document of another ``kind``, is an
    :class:`ArtifactError` naming the file and what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"no file at {p}")
    try:
        doc = json.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ArtifactError(
            f"{p} is not a JSON file (binary content: a safetensors artifact? load it with "
            "the class that saved it)"
        ) from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{p} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ArtifactError(f"{p} holds a JSON {type(doc).__name__}, not an object")
    if kind is not None and doc.get("kind", kind) != kind:
        raise ArtifactError(f"{p} holds a {doc.get('kind')!r}, expected a {kind!r}")
    return doc


def metadata_digest(meta: dict[str, Any]) -> str:
    """sha256 of an artifact's header document (canonical JSON), without its own entry."""
    doc = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON document stored in a semhooks artifact, without loading its tensors."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"no artifact at {p}")
    try:
        with open(p, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > p.stat().st_size - 8:
                raise ArtifactError(f"{p} is truncated or not a safetensors file")
            header = json.loads(fh.read(n))
        meta = json.loads(header["__metadata__"][_META_KEY])
    except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{p} is not a semhooks artifact (unreadable header: {exc})") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(
            f"{p} is not a semhooks artifact: its metadata is a {type(meta).__name__}, "
            "not a JSON object"
        )
    return meta


def load_artifact(
    path: str | os.PathLike[str],
    kind: str,
    *,
    model: Any = None,
    allow_other_model: bool = False,
    verify: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an artifact written by :func:`save_artifact`, checking its kind and version.

    With ``model``, also refuse an artifact made on another model (see
    :func:`check_compatible`). Both checksums (tensors and metadata) must be present and
    match; ``verify=False`` skips them, for callers that have already checked the whole
    file (e.g. against a shard manifest) or that knowingly read an unverifiable file.
    """
    meta = read_metadata(path)
    if meta.get("kind") != kind:
        raise ArtifactError(f"{path} holds a {meta.get('kind')!r}, expected a {kind!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {meta.get('format_version')}, this semhooks reads "
            f"version {FORMAT_VERSION}; re-create the artifact"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is corrupted: {exc}") from exc
    if verify:
        for field in ("tensors_sha256", "metadata_sha256"):
            if not isinstance(meta.get(field), str):
                raise ArtifactError(
                    f"{path} cannot be verified: its {field} is "
                    f"{'missing' if field not in meta else repr(meta[field])} (removed, or "
                    "saved by an older semhooks); re-create it, or pass verify=False to load "
                    "it unchecked"
                )
        if tensors_digest(tensors) != meta["tensors_sha256"]:
            raise ArtifactError(
                f"{path} is corrupted: its tensors do not match the checksum saved with them"
            )
        if metadata_digest(meta) != meta["metadata_sha256"]:
            raise ArtifactError(
                f"{path} is corrupted: its metadata (header) do not match the checksum saved "
                "with them"
            )
    if model is not None:
        from semhooks.backend.adapter import adapt

        check_compatible(
            meta,
            adapt(model).provenance(),
            f"the {kind} in {path}",
            allow_other_model=allow_other_model,
        )
    return tensors, meta


def check_compatible(
    meta: dict[str, Any],
    provenance: dict[str, Any],
    what: str,
    *,
    allow_other_model: bool = False,
) -> None:
    """Refuse an artifact made on another model, or on one with another width or hook layout.

    ``allow_other_model=True`` accepts an artifact from a different model of the same shape
    (e.g. a fine-tuned sibling); width, depth and hook layout must still agree.
    """
    stored = meta.get("provenance", {})
    keys: tuple[str, ...] = ("d_model", "n_layers", "hook_layout")
    if not allow_other_model:
        keys = ("model", "model_type", *keys)
    for key in keys:
        if key in stored and key in provenance and stored[key] != provenance[key]:
            hint = (
                " (pass allow_other_model=True to accept it)"
                if key in ("model", "model_type")
                else ""
            )
            raise ArtifactError(
                f"{what} was made on {stored.get('model')!r} with {key}={stored[key]!r}, but "
                f"this model ({provenance.get('model')!r}) has {key}={provenance[key]!r}{hint}"
            )
