"""Shard folders as Hugging Face ``datasets`` (Arrow), so extracted states feed other tools.

``datasets`` is an optional dependency (``pip install semhooks[datasets]``), imported only
when a function here is called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from semhooks.extraction.states import ShardedStates
from semhooks.io.artifacts import ArtifactError


def _require_datasets() -> Any:
    try:
        import datasets
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "this needs the optional 'datasets' package: pip install 'semhooks[datasets]'"
        ) from exc
    return datasets


def _rows(folder: str, layers: tuple[int, ...], shas: tuple[str, ...]) -> Any:
    """One row per item: ``item`` and ``layer_<l>`` (float32 ``[d_model]``) per layer.

    ``shas`` only keys the ``datasets`` cache on the shards' content.
    """
    sharded = ShardedStates.open(folder)
    item = 0
    blocks = [sharded.iter_layer(layer) for layer in layers]
    for parts in zip(*blocks, strict=True):
        for row in range(int(parts[0].shape[0])):
            yield {
                "item": item,
                **{f"layer_{k}": p[row].numpy() for k, p in zip(layers, parts, strict=True)},
            }
            item += 1


def shards_to_dataset(
    shards: ShardedStates | str | os.PathLike[str],
    layers: list[int] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """A :class:`~semhooks.ShardedStates` folder as an Arrow-backed ``datasets.Dataset``.

    Columns: ``item`` (the text's index) and ``layer_<l>`` (a float32 ``[d_model]`` vector)
    for each requested layer (default: all). Rows are written shard by shard (checksums
    verified) into an Arrow file that ``datasets`` memory-maps, so a folder larger than
    memory converts; the conversion is cached and keyed by the shards' checksums.
    ``dataset.with_format("torch")[:]["layer_6"]`` gives back ``[n_items, d_model]``. The
    folder's manifest (model, site, pooling, provenance) is in ``dataset.info.description``.
    """
    datasets = _require_datasets()
    sharded = shards if isinstance(shards, ShardedStates) else ShardedStates.open(shards)
    if not sharded.complete:
        raise ArtifactError(f"{sharded.folder} is incomplete; re-run extract_states to resume")
    chosen = sharded.layers if layers is None else [int(x) for x in layers]
    for layer in chosen:
        if layer not in sharded.layers:
            raise KeyError(
                f"layer {layer} not extracted; these shards hold layers {sharded.layers}"
            )
    d = int(sharded.manifest.get("provenance", {}).get("d_model", 0)) or None
    features = datasets.Features(
        {
            "item": datasets.Value("int64"),
            **{
                f"layer_{layer}": datasets.Sequence(datasets.Value("float32"), length=d or -1)
                for layer in chosen
            },
        }
    )
    shas = [s["sha256"] for s in sharded.manifest["shards"]]
    import json

    info = datasets.DatasetInfo(
        description=json.dumps(
            {k: v for k, v in sharded.manifest.items() if k != "shards"}, default=str
        ),  # fmt: skip
        features=features,
    )
    return datasets.Dataset.from_generator(
        _rows,
        features=features,
        gen_kwargs={
            "folder": str(Path(sharded.folder).resolve()),
            "layers": tuple(chosen),
            "shas": tuple(shas),
        },
        cache_dir=None if cache_dir is None else str(cache_dir),
        info=info,
    )
