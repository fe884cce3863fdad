"""Streaming extraction to a folder of shards: :class:`ShardedStates`, the folder lock, the
manifest, and resume keyed by a content hash of everything that decides the states.

Shard ``k`` holds items ``k * shard_size ...`` of the corpus, computed by
:func:`~semhooks.extraction.plan.extract_items` exactly as an in-memory extraction would.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.extraction.layer_states import LayerStates
from semhooks.extraction.plan import ExtractionPlan, extract_items
from semhooks.io.artifacts import ArtifactError, atomic_write_json, read_metadata
from semhooks.io.fingerprint import (
    content_sha256,
    corpus_sha256,
    file_sha256,
    model_fingerprint,
    pool_weights_sha256,
    selection_sha256,
)

SHARD_NAME = "shard-{k:05d}.safetensors"
_LOCK_NAME = ".semhooks.lock"


class FolderLockedError(RuntimeError):
    """Another process is writing the same shard folder (one writer per ``out_dir``)."""


@contextlib.contextmanager
def folder_lock(folder: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the folder's writer lock (``shared``: the ranks of one data-parallel run).

    Raises :class:`FolderLockedError` at once when another process holds it, instead of
    letting two writers overwrite each other's shards. POSIX advisory locks (``flock``);
    where ``fcntl`` is missing (Windows) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / _LOCK_NAME, "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(fh.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise FolderLockedError(
                f"{folder} is being written by {holder}; wait for it to finish, or give this "
                "extraction another out_dir"
            ) from None
        if not shared:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
            fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


def check_shard_size(shard_size: Any) -> int:
    """``shard_size`` as an int >= 1, or a ValueError naming the value."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)):
        raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 (items per shard file), got {shard_size}")
    return int(shard_size)


def read_manifest(path: Path) -> dict[str, Any]:
    """A shard manifest, or an ArtifactError naming the file and what is wrong with it."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(
            f"{path} is damaged ({type(exc).__name__}: {exc}); re-run the same extraction "
            "(extract_states(out_dir=...)) to rebuild it from the shard files"
        ) from None
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("config"), dict)
        or not isinstance(manifest.get("n_items"), int)
        or not isinstance(shards, list)
        or not all(
            isinstance(s, dict)
            and isinstance(s.get("file"), str)
            and "/" not in s["file"]
            and isinstance(s.get("start"), int)
            and isinstance(s.get("n_items"), int)
            and isinstance(s.get("sha256"), str)
            for s in shards
        )
    ):
        raise ArtifactError(
            f"{path} is damaged (not a shard manifest with config, n_items and shards "
            "[file, start, n_items, sha256]); re-run the same extraction to rebuild it"
        )
    return manifest


def config_difference(old: Any, new: dict[str, Any]) -> str:
    """Which keys of two shard configs differ, for an error message."""
    if not isinstance(old, dict):
        return "it records no extraction config"

    def short(v: Any) -> str:
        text = repr(v)
        return text if len(text) <= 40 else text[:37] + "..."

    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {short(old.get(k))} there, {short(new.get(k))} now" for k in keys)


@dataclass
class ShardedStates:
    """A folder of LayerStates shards plus ``manifest.json`` (model, layers, pooling, checksums)."""

    folder: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> ShardedStates:
        path = Path(folder) / "manifest.json"
        if not path.is_file():
            raise ArtifactError(f"{folder} has no manifest.json; not a semhooks shard folder")
        return cls(Path(folder), read_manifest(path))

    @property
    def n_items(self) -> int:
        return int(self.manifest["n_items"])

    @property
    def complete(self) -> bool:
        return sum(s["n_items"] for s in self.manifest["shards"]) == self.n_items

    def _checked_path(self, shard: dict[str, Any], verify: bool = True) -> Path:
        path = self.folder / shard["file"]
        if not path.is_file():
            raise ArtifactError(
                f"shard {path} listed in the manifest is missing; re-run the same extraction "
                "(extract_states(out_dir=...)) to recompute it"
            )
        if verify and file_sha256(path) != shard["sha256"]:
            raise ArtifactError(
                f"shard {path} does not match its checksum in the manifest; re-run the same "
                "extraction to recompute it"
            )
        return path

    def __iter__(self) -> Iterator[LayerStates]:
        for shard in self.manifest["shards"]:
            path = self._checked_path(shard)
            yield LayerStates.load(path, verify=False)  # the file's sha256 was just checked

    def load(self) -> LayerStates:
        """Concatenate every shard (needs the whole result to fit in memory)."""
        if not self.complete:
            raise ArtifactError(f"{self.folder} is incomplete; re-run extract_states to resume")
        parts = list(self)
        first = parts[0]
        return LayerStates(
            torch.cat([p.states for p in parts], dim=1),
            first.layers,
            first.site,
            first.pool,
            first.tokens,
            {**first.provenance, "n_items": self.n_items},
        )

    @property
    def layers(self) -> list[int]:
        return [int(x) for x in self.manifest["config"]["layers"]]

    def iter_layer(
        self, layer: int, *, verify: bool = True
    ) -> Iterator[Float[Tensor, "shard_item d_model"]]:
        """One layer, shard by shard, read lazily from disk (memory: one shard of one layer).

        safetensors memory-maps each file and copies only the requested layer's rows.
        ``verify`` checks each shard's checksum first (streamed, constant memory).
        """
        from safetensors import safe_open

        if layer < 0:
            layer += int(self.manifest.get("provenance", {}).get("n_layers", 0))
        if layer not in self.layers:
            raise KeyError(f"layer {layer} not extracted; these shards hold layers {self.layers}")
        li = self.layers.index(layer)
        for shard in self.manifest["shards"]:
            path = self._checked_path(shard, verify)
            with safe_open(str(path), framework="pt") as fh:
                yield fh.get_slice("states")[li]

    def layer(self, layer: int, *, verify: bool = True) -> Float[Tensor, "item d_model"]:
        """States at one model layer for every item, without loading the other layers."""
        if not self.complete:
            raise ArtifactError(f"{self.folder} is incomplete; re-run extract_states to resume")
        return torch.cat(list(self.iter_layer(layer, verify=verify)))


def shard_config(plan: ExtractionPlan, shard_size: int) -> dict[str, Any]:
    """What a shard folder was made from; a resumed or merged extraction must match it.

    Every entry that decides the states is here as content: the model's weights and
    tokenizer (``model_sha256``), the texts, the token selection as applied to them, the
    pooling weights, layers, site, pooling, truncation and the semhooks version and source
    code (:func:`~semhooks.io.artifacts.source_sha256`). (Batch size,
    padding side and batch order do not change the states.)
    """
    from semhooks.io.artifacts import semhooks_version, source_sha256

    adapter, texts, layer_list = plan.adapter, list(plan.texts), list(plan.layers)
    weights = None
    if plan.pool == "weighted":
        weights = pool_weights_sha256(
            plan.pool_weights, layer_list, adapter.d_model, adapter.device, adapter.dtype
        )
    return {
        "key_version": 2,
        "model": adapter.name,
        "hook_layout": adapter.hook_layout,
        "model_sha256": content_sha256(model_fingerprint(adapter)),
        "layers": layer_list,
        "site": plan.site,
        "pool": plan.pool,
        "pool_weights_sha256": weights,
        "tokens": plan.tokens,
        "tokens_sha256": selection_sha256(plan.selector, texts),
        "truncate": bool(plan.truncate),
        "corpus_sha256": corpus_sha256(texts),
        "n_items": len(texts),
        "shard_size": shard_size,
        "semhooks_version": semhooks_version(),
        "semhooks_source_sha256": source_sha256("semhooks"),
    }


def reusable_shards(
    folder: Path, config: dict[str, Any], n_items: int
) -> dict[int, dict[str, Any]]:
    """Manifest entries (by shard index) of the shards on disk that belong to ``config``.

    A shard is reused when a manifest in the folder lists it with a matching checksum, or,
    when no readable manifest does (a damaged or missing ``manifest.json``, a data-parallel
    run killed before its merge), when the file's own header names this extraction's key
    and its tensors verify. A readable manifest or a shard of another extraction is refused
    (``ArtifactError`` naming what differs); missing and damaged shards are recomputed.
    """
    key = content_sha256(config)
    listed: dict[str, dict[str, Any]] = {}
    paths = [folder / "manifest.json", *sorted(folder.glob("manifest-rank*.json"))]
    for path in paths:
        if not path.is_file():
            continue
        try:
            manifest = read_manifest(path)
        except ArtifactError:
            continue  # damaged: rebuilt from the shard files below
        if manifest["config"] != config:
            raise ArtifactError(
                f"{folder} holds shards of another extraction ({path.name}: "
                f"{config_difference(manifest['config'], config)}); use a new out_dir"
            )
        for entry in manifest["shards"]:
            listed[f"{entry['file']}:{entry['sha256']}"] = entry
    size = int(config["shard_size"])
    done: dict[int, dict[str, Any]] = {}
    for k in range(-(-n_items // size)):
        path = folder / SHARD_NAME.format(k=k)
        if not path.is_file():
            continue
        sha = file_sha256(path)
        entry = listed.get(f"{path.name}:{sha}")
        expected = min(size, n_items - k * size)
        if entry is not None and entry["start"] == k * size and entry["n_items"] == expected:
            done[k] = entry
            continue
        try:
            stored = read_metadata(path).get("provenance", {})
        except ArtifactError:
            continue  # torn or damaged: recompute
        if stored.get("shard_key") != key:
            raise ArtifactError(
                f"{path} was written by another extraction (or an older semhooks) and no "
                "manifest vouches for it; use a new out_dir"
            )
        try:
            part = LayerStates.load(path)
        except ArtifactError:
            continue
        if stored.get("start") == k * size and part.states.shape[1] == expected:
            done[k] = {"file": path.name, "start": k * size, "n_items": expected, "sha256": sha}
    return done


def extract_shard(
    plan: ExtractionPlan,
    k: int,
    shard_size: int,
    folder: Path,
    shard_key: str,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Extract shard ``k`` (items ``k * shard_size ...``), save it, return its manifest entry.

    The shard's header records ``shard_key`` (the sha256 of the extraction config), so a
    resume can trust the file even when no manifest survived. ``provenance`` extends the
    plan's (e.g. the rank).
    """
    start = k * shard_size
    items = range(start, min(start + shard_size, len(plan.texts)))
    part = extract_items(
        plan,
        items,
        provenance={**(provenance or {}), "shard": k, "start": start, "shard_key": shard_key},
    )
    name = SHARD_NAME.format(k=k)
    part.save(folder / name)
    return {
        "file": name,
        "start": start,
        "n_items": len(items),
        "sha256": file_sha256(folder / name),
    }


def extract_sharded(
    plan: ExtractionPlan, folder: Path, shard_size: int, *, progress: bool = False
) -> ShardedStates:
    """Every missing or damaged shard of ``plan`` into ``folder`` (one writer at a time)."""
    if plan.pool is None:
        raise ValueError("streaming to shards needs a pooling (pool=None keeps every token)")
    n_items = len(plan.texts)
    config = shard_config(plan, shard_size)
    key = content_sha256(config)
    manifest_path = folder / "manifest.json"
    with folder_lock(folder):
        done = reusable_shards(folder, config, n_items)
        manifest: dict[str, Any] = {
            "config": config,
            "n_items": n_items,
            "provenance": plan.provenance,
            "shards": [done[k] for k in sorted(done)],
        }
        atomic_write_json(manifest_path, manifest)  # repairs a damaged one at once
        n_shards = -(-n_items // shard_size)
        for k in tqdm(range(n_shards), desc="shards", disable=not progress, unit="shard"):
            if k in done:
                continue
            done[k] = extract_shard(plan, k, shard_size, folder, key)
            manifest["shards"] = [done[j] for j in sorted(done)]
            atomic_write_json(manifest_path, manifest)
    return ShardedStates(folder, manifest)
