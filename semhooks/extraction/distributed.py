"""Data-parallel extraction and LRE fitting across processes and machines (``accelerate``).

Every process runs the same script; each takes every ``world_size``-th shard of the corpus,
writes its shards into one shared folder with a rank-tagged manifest, and rank 0 merges the
rank manifests into the ``manifest.json`` that :class:`~semhooks.ShardedStates` reads. Shard
``k`` always holds items ``k * shard_size ...`` and is computed exactly as
:func:`~semhooks.extract_states` (``out_dir=...``) computes it, so the merged folder is
identical (``torch.equal``) to a single-process run, and either kind of run resumes the
other's interrupted folder.

Launch (a script calling :func:`extract_states_distributed`)::

    accelerate launch --multi_gpu --num_processes 2 extract.py   # one machine, 2 processes
    torchrun --nproc_per_node 2 extract.py                       # the same, without accelerate's CLI
    accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST ... extract.py

On a machine without CUDA the processes talk over gloo on CPU. ``accelerate launch --cpu
--num_processes N`` starts a single process unless accelerate is configured for mpirun;
use the ``--multi_gpu`` form above (it starts ``torch.distributed.run``, and semhooks asks
accelerate for CPU processes when CUDA is absent). Across machines, ``out_dir`` must be on
storage every machine can write (or copy the shard files together and call
:func:`merge_shards`).

LRE fitting across ranks lives a layer up, in :mod:`semhooks.relations.distributed`
(``mean_jacobian_distributed``, ``fit_lre_distributed``), built on the process-group helpers
here (:func:`distributed_state`, :func:`all_gather_object`, :func:`check_all_ranks`,
:func:`resolve_model`); the old names here still resolve there, deprecated.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from semhooks.backend.adapter import ModelAdapter, load_model
from semhooks.extraction.plan import ExtractionPlan, plan_extraction
from semhooks.extraction.selection import TokenSpec
from semhooks.extraction.shards import (
    ShardedStates,
    check_shard_size,
    config_difference,
    extract_shard,
    folder_lock,
    read_manifest,
    reusable_shards,
    shard_config,
)
from semhooks.io.artifacts import ArtifactError, atomic_write_json
from semhooks.io.fingerprint import content_sha256, file_sha256

__all__ = [
    "DistributedError",
    "all_gather_object",
    "check_all_ranks",
    "distributed_state",
    "extract_states_distributed",
    "launch_info",
    "merge_shards",
    "resolve_model",
    "shard_plan",
]

# Moved up to semhooks.relations.distributed (extraction never imports relations): the old
# names resolve there on first use, with a DeprecationWarning (see ``__getattr__``).
_MOVED_UP = {
    "fit_lre_distributed": "semhooks.relations.distributed",
    "mean_jacobian_distributed": "semhooks.relations.distributed",
}

_RANK_MANIFEST = "manifest-rank{rank:05d}.json"


class DistributedError(RuntimeError):
    """One or more processes of a data-parallel run failed (every rank raises it)."""


# ---------------------------------------------------------------------- process group
def distributed_state(state: Any = None) -> Any:
    """The ``accelerate.PartialState`` of this process (created on first use).

    Without CUDA (or with ``ACCELERATE_USE_CPU=1``) accelerate is asked for CPU processes,
    so a ``torchrun``/``accelerate launch`` on a CPU machine forms a gloo group; a plain
    ``python script.py`` is a world of one process.
    """
    if state is not None:
        return state
    from accelerate import PartialState

    env_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=env_cpu or not torch.cuda.is_available())


def all_gather_object(obj: Any, state: Any = None) -> list[Any]:
    """``obj`` from every rank, in rank order (a barrier; picklable objects)."""
    state = distributed_state(state)
    if state.num_processes == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * state.num_processes
    dist.all_gather_object(out, obj)
    return out


def check_all_ranks(error: str | None, state: Any, what: str) -> None:
    """Barrier that raises on every rank when any rank failed (no rank is left waiting)."""
    errors = all_gather_object(error, state)
    failed = {rank: err for rank, err in enumerate(errors) if err is not None}
    if failed:
        detail = "\n".join(f"--- rank {rank}:\n{err}" for rank, err in failed.items())
        raise DistributedError(f"{what} failed on rank(s) {sorted(failed)}:\n{detail}")


def shard_plan(n_items: int, shard_size: int, world_size: int, rank: int) -> list[int]:
    """Shard indices rank ``rank`` computes: every ``world_size``-th, starting at ``rank``.

    Striding balances ranks when shard cost drifts along the corpus (e.g. sorted inputs).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
    n_shards = -(-n_items // shard_size)
    return list(range(rank, n_shards, world_size))


def resolve_model(model: Any, state: Any) -> Any:
    """A model for this rank: given as is, loaded by name, or built by a factory."""
    if isinstance(model, ModelAdapter) or (hasattr(model, "cfg") and hasattr(model, "hooks")):
        return model
    device = None if state.device.type == "cpu" else str(state.device)
    if isinstance(model, str):
        return load_model(model, device=device)
    if callable(model):
        built = model()
        if device is not None and hasattr(built, "to"):
            built = built.to(device)
        return built
    raise TypeError(
        f"model must be a TransformerLens model, a semhooks model name or a factory returning "
        f"one; got {type(model).__name__}"
    )


# ---------------------------------------------------------------------- manifests
def _read_manifests(folder: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[Path]]:
    """The readable manifests in ``folder`` and the damaged ones (left out, to be replaced)."""
    found, damaged = [], []
    paths = [folder / "manifest.json", *sorted(folder.glob("manifest-rank*.json"))]
    for path in paths:
        if path.is_file():
            try:
                found.append((path, read_manifest(path)))
            except ArtifactError:
                damaged.append(path)
    return found, damaged


def _verified_entries(
    folder: Path, config: dict[str, Any] | None
) -> tuple[dict[int, dict[str, Any]], list[tuple[Path, dict[str, Any]]]]:
    """Shard entries (by start) whose files exist and match their checksums.

    Every readable manifest in the folder must describe the same extraction (``config``
    when given); damaged manifests are skipped (a merge replaces them).
    """
    manifests, _ = _read_manifests(folder)
    reference = (
        config if config is not None else (manifests[0][1].get("config") if manifests else None)
    )
    done: dict[int, dict[str, Any]] = {}
    checked: dict[str, bool] = {}
    for path, manifest in manifests:
        if manifest.get("config") != reference:
            raise ArtifactError(
                f"{path} describes another extraction "
                f"({config_difference(manifest.get('config'), reference or {})}); "
                "use a new out_dir"
            )
        for entry in manifest.get("shards", []):
            file = folder / entry["file"]
            key = f"{entry['file']}:{entry['sha256']}"
            if key not in checked:
                checked[key] = file.is_file() and file_sha256(file) == entry["sha256"]
            if checked[key]:
                done[int(entry["start"])] = entry
    return done, manifests


def merge_shards(out_dir: str | os.PathLike[str]) -> ShardedStates:
    """Merge rank manifests (``manifest-rank*.json``) into one ``manifest.json``.

    Checks that every manifest describes the same extraction, that every shard file matches
    its checksum, and that the shards cover all items exactly once. Rank manifests are
    removed after the merged manifest is written (atomically).

    Raises:
        ArtifactError: mixed extractions, or missing/corrupted shards (re-run the same
            extraction to fill them in).
    """
    folder = Path(out_dir)
    with folder_lock(folder):
        return _merge_shards(folder)


def _merge_shards(folder: Path) -> ShardedStates:
    done, manifests = _verified_entries(folder, None)
    _, damaged = _read_manifests(folder)
    if not manifests:
        raise ArtifactError(
            f"{folder} holds no manifest to merge"
            + (f" that can be read (damaged: {[p.name for p in damaged]})" if damaged else "")
            + "; not a semhooks shard folder, or re-run the same extraction to rebuild it"
        )
    first = manifests[0][1]
    config, n_items = first["config"], int(first["n_items"])
    size = int(config["shard_size"])
    missing = [start // size for start in range(0, n_items, size) if start not in done]
    if missing:
        raise ArtifactError(
            f"{folder} lacks {len(missing)} shard(s) (indices {missing[:10]}"
            f"{'...' if len(missing) > 10 else ''}) or they fail their checksums; re-run the "
            "same extraction (extract_states_distributed or extract_states(out_dir=...)) to "
            "fill them in"
        )
    shards = [done[start] for start in range(0, n_items, size)]
    if sum(int(s["n_items"]) for s in shards) != n_items:
        raise ArtifactError(f"{folder}: the shards' item counts do not add up to {n_items}")
    provenance = dict(first.get("provenance", {}))
    provenance.pop("rank", None)
    merged = {"config": config, "n_items": n_items, "provenance": provenance, "shards": shards}
    atomic_write_json(folder / "manifest.json", merged)
    for path in [p for p, _ in manifests] + damaged:
        if path.name != "manifest.json":
            path.unlink(missing_ok=True)
    return ShardedStates(folder, merged)


# ---------------------------------------------------------------------- extraction
def extract_states_distributed(
    model: Any,
    texts: Sequence[str],
    out_dir: str | os.PathLike[str],
    layers: int | Sequence[int] | str = "all",
    site: str = "resid_post",
    tokens: TokenSpec = "last",
    pool: str = "mean",
    *,
    pool_weights: Any = None,
    batch_size: int = 16,
    padding_side: str = "right",
    truncate: bool = False,
    sort_by_length: bool = True,
    progress: bool = True,
    shard_size: int = 1024,
    state: Any = None,
) -> ShardedStates:
    """:func:`~semhooks.extract_states` over the processes of an ``accelerate`` launch.

    Call it with the same arguments on every rank. Rank ``r`` of ``w`` computes shards
    ``r, r + w, r + 2w, ...`` (see :func:`shard_plan`) into ``out_dir``, recording them in
    ``manifest-rank{r}.json`` after each shard; rank 0 then merges the rank manifests into
    ``manifest.json`` (:func:`merge_shards`). A re-run with the same arguments (any number
    of processes, or plain ``extract_states(out_dir=...)``) skips every shard already on
    disk with a matching checksum.

    Args:
        model: a TransformerLens model (every rank must hold the same weights), a semhooks
            model name for :func:`~semhooks.load_model` (loaded on this rank's device), or a
            zero-argument factory returning a model (e.g. a seeded ``tiny_model``).
        texts: the whole corpus, identical on every rank.
        out_dir: the shared output folder.
        state: an ``accelerate.PartialState`` (default: :func:`distributed_state`).
        Other arguments: as :func:`~semhooks.extract_states` (``pool`` may not be None).

    Returns:
        The merged :class:`~semhooks.ShardedStates` (on every rank), with states
        ``[n_layers, n_items, d_model]`` shard by shard.

    Raises:
        DistributedError: on every rank, when any rank failed (the message carries each
            failing rank's traceback); finished shards stay on disk for a resume.
    """
    state = distributed_state(state)
    rank, world = int(state.process_index), int(state.num_processes)
    error: str | None = None
    folder = Path(out_dir)
    try:
        if pool is None:
            raise ValueError("streaming to shards needs a pooling (pool=None keeps every token)")
        plan = plan_extraction(
            resolve_model(model, state),
            texts,
            layers,
            site,
            tokens,
            pool,
            pool_weights=pool_weights,
            batch_size=batch_size,
            padding_side=padding_side,
            truncate=truncate,
            sort_by_length=sort_by_length,
        )
        shard_size = check_shard_size(shard_size)
        folder.mkdir(parents=True, exist_ok=True)
        config = shard_config(plan, shard_size)
        mine = shard_plan(len(plan.texts), shard_size, world, rank)
    except Exception:
        error = traceback.format_exc()
    check_all_ranks(error, state, "planning the extraction")
    try:
        with folder_lock(folder, shared=True):
            _extract_rank_shards(plan, folder, config, mine, rank, world, progress)
    except Exception:
        error = traceback.format_exc()
    check_all_ranks(error, state, "extracting shards")
    if rank == 0:
        try:
            merge_shards(folder)
        except Exception:
            error = traceback.format_exc()
    check_all_ranks(error, state, "merging the rank manifests")
    return ShardedStates.open(folder)


def _extract_rank_shards(
    plan: ExtractionPlan,
    folder: Path,
    config: dict[str, Any],
    mine: list[int],
    rank: int,
    world: int,
    progress: bool,
) -> None:
    """This rank's shards into ``folder``, recorded in its rank manifest after each one."""
    shard_size = int(config["shard_size"])
    key = content_sha256(config)
    n_items = len(plan.texts)
    provenance = plan.provenance
    # A rank reuses every shard on disk that belongs to this extraction: listed by any
    # manifest, or vouched for by its own header when no readable manifest lists it.
    done = {k * shard_size: entry for k, entry in reusable_shards(folder, config, n_items).items()}
    entries: dict[int, dict[str, Any]] = {}
    rank_manifest = folder / _RANK_MANIFEST.format(rank=rank)

    def write_rank_manifest() -> None:
        atomic_write_json(
            rank_manifest,
            {
                "config": config,
                "n_items": n_items,
                "provenance": {**provenance, "world_size": world},
                "rank": rank,
                "shards": [entries[s] for s in sorted(entries)],
            },
        )

    for k in tqdm(mine, desc=f"shards (rank {rank}/{world})", disable=not progress, unit="shard"):
        start = k * shard_size
        if start in done:
            entries[start] = done[start]
            continue
        entries[start] = extract_shard(
            plan, k, shard_size, folder, key, {"rank": rank, "world_size": world}
        )
        write_rank_manifest()
    # Shards of this rank that were already done still need a rank manifest to merge.
    write_rank_manifest()


def launch_info(state: Any = None) -> dict[str, Any]:
    """``{rank, world_size, device, backend}`` of this process (for logs and provenance)."""
    state = distributed_state(state)
    return {
        "rank": int(state.process_index),
        "world_size": int(state.num_processes),
        "device": str(state.device),
        "backend": state.backend,
    }


def __getattr__(name: str) -> Any:
    """The LRE helpers that moved up to :mod:`semhooks.relations.distributed` (deprecated
    here; resolved by name at first use, so this module imports nothing from relations)."""
    if name in _MOVED_UP:
        import importlib
        import warnings

        warnings.warn(
            f"semhooks.extraction.distributed.{name} moved to {_MOVED_UP[name]}.{name}; "
            "import it from there. The old path will be removed in semhooks 0.3.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED_UP[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
