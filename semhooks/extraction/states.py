"""Per-layer states of chosen tokens, pooled inside the hook; ``LayerStates`` and its I/O.

:func:`extract_states` runs texts through the model once, batch by batch. A hook on each
requested layer selects tokens (last, first, all, a span, explicit positions), pools them
(mask-aware) and copies only ``[batch, d]`` out of the forward pass; the deepest hook then
stops the pass, so later blocks and the unembedding never run. Memory is
``O(n_layers x n_items x d)``, never a full activation cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.backend.adapter import ModelAdapter, StopForward, Tokenized, adapt
from semhooks.data.columns import from_columns
from semhooks.extraction.pooling import POOLS, pool, scores_for
from semhooks.extraction.spans import Spans
from semhooks.io.artifacts import (
    ArtifactError,
    atomic_write_json,
    load_artifact,
    read_metadata,
    save_artifact,
)
from semhooks.io.fingerprint import (
    content_sha256,
    corpus_sha256,
    file_sha256,
    model_fingerprint,
    pool_weights_sha256,
    selection_sha256,
)

TokenSpec = Any  # "last" | "first" | "all" | Spans | list[str] | callable | list[int | list[int]]


# ---------------------------------------------------------------------- token selection
def _describe_tokens(tokens: TokenSpec) -> str:
    if isinstance(tokens, str):
        return tokens
    if isinstance(tokens, Spans):
        return tokens.describe()
    if callable(tokens):
        return "span(callable)"
    return "explicit"


def _as_selector(tokens: TokenSpec) -> TokenSpec:
    if isinstance(tokens, str):
        if tokens not in ("last", "first", "all"):
            raise ValueError(
                f"unknown token selection {tokens!r}; use 'last', 'first', 'all', a list of "
                "substrings (one per text), semhooks.Spans(...), or explicit positions"
            )
        return tokens
    if isinstance(tokens, Spans):
        return tokens
    if callable(tokens):
        return Spans(tokens)
    if isinstance(tokens, Sequence) and tokens and all(isinstance(t, str) for t in tokens):
        return Spans(list(tokens))
    if isinstance(tokens, (Sequence, Tensor)):
        return list(tokens)
    raise TypeError(f"cannot select tokens with {tokens!r}")


def select_tokens(
    batch: Tokenized, tokens: TokenSpec, item_ids: Sequence[int] | None = None
) -> Bool[Tensor, "batch pos"]:
    """Boolean selection ``[batch, pos]`` of the tokens to pool in each row.

    - ``"last"``: the last content token (the last non-special, non-pad token; for decoders
      the last token, for BERT the token before [SEP]).
    - ``"first"``: the first non-pad token (BOS or CLS when the model has one).
    - ``"all"``: every content token (BOS/CLS/SEP and padding excluded).
    - :class:`Spans` or a list of substrings: the span's tokens via character offsets.
    - explicit positions: one int or list of ints per text, indices into the unpadded token
      sequence (BOS included); negative values count from its end.
    """
    sel = _as_selector(tokens)
    attn = batch.attention_mask.bool()
    content = attn & ~batch.special
    ids = list(item_ids) if item_ids is not None else list(range(len(batch)))
    if isinstance(sel, str):
        if sel == "all":
            # A row of special tokens only (possible for empty content) falls back to all tokens.
            empty = ~content.any(-1, keepdim=True)
            return torch.where(empty, attn, content)
        base = torch.where(~content.any(-1, keepdim=True), attn, content) if sel == "last" else attn
        pos = torch.arange(attn.shape[1]).expand_as(attn)
        if sel == "last":
            idx = torch.where(base, pos, -1).amax(1)
        else:
            idx = torch.where(base, pos, attn.shape[1]).amin(1)
        return pos == idx[:, None]
    mask = torch.zeros_like(attn)
    for row, item in enumerate(ids):
        if isinstance(sel, Spans):
            positions = sel.positions(batch, row, item)
        else:
            spec = sel[item]
            spec = [spec] if isinstance(spec, int) else list(spec)
            n = int(attn[row].sum())
            start = attn.shape[1] - n if batch.padding_side == "left" else 0
            positions = []
            for p in spec:
                q = p + n if p < 0 else p
                if not 0 <= q < n:
                    raise ValueError(
                        f"position {p} is out of range for text {item} with {n} tokens "
                        f"({batch.texts[row][:60]!r})"
                    )
                positions.append(start + q)
        mask[row, positions] = True
    return mask


# ---------------------------------------------------------------------- LayerStates
@dataclass
class LayerStates:
    """States of ``n_items`` texts at several layers: ``states[layer_i, item, d_model]``.

    With ``pool=None`` each row is one token: ``item_index[row]`` names its text and
    ``positions[row]`` its position in the unpadded sequence.
    """

    states: Float[Tensor, "layer item d_model"]
    layers: list[int]
    site: str
    pool: str | None
    tokens: str
    provenance: dict[str, Any] = field(default_factory=dict)
    item_index: Tensor | None = None
    positions: Tensor | None = None

    def __post_init__(self) -> None:
        if self.states.ndim != 3 or self.states.shape[0] != len(self.layers):
            raise ValueError(
                f"states must be [n_layers={len(self.layers)}, items, d]; got "
                f"{tuple(self.states.shape)}"
            )

    @property
    def n_items(self) -> int:
        if self.item_index is None:
            return int(self.states.shape[1])
        return int(self.provenance.get("n_items", int(self.item_index.max()) + 1))

    @property
    def d_model(self) -> int:
        return int(self.states.shape[-1])

    def _li(self, layer: int) -> int:
        if layer < 0 and "n_layers" in self.provenance:
            layer += int(self.provenance["n_layers"])
        if layer not in self.layers:
            raise KeyError(f"layer {layer} not extracted; these states hold layers {self.layers}")
        return self.layers.index(layer)

    def layer(self, layer: int) -> Float[Tensor, "item d_model"]:
        """States at model layer ``layer`` (a model layer number, not an index into layers)."""
        return self.states[self._li(layer)]

    __getitem__ = layer

    def numpy(self, layer: int) -> np.ndarray:
        """``[items, d]`` float32 array for scikit-learn."""
        return self.layer(layer).float().numpy()

    def select_layers(self, layers: Sequence[int]) -> LayerStates:
        idx = [self._li(layer) for layer in layers]
        return replace(self, states=self.states[idx], layers=list(layers))

    def padded(self, layer: int) -> tuple[Float[Tensor, "item tok d"], Bool[Tensor, "item tok"]]:
        """Token-level states (``pool=None``) as a padded ``[items, max_tokens, d]`` and mask."""
        if self.item_index is None:
            raise ValueError("padded() needs token-level states (extract_states(pool=None))")
        x = self.layer(layer)
        counts = torch.bincount(self.item_index, minlength=self.n_items)
        width = int(counts.max())
        out = x.new_zeros(self.n_items, width, x.shape[-1])
        mask = torch.zeros(self.n_items, width, dtype=torch.bool)
        order = torch.argsort(self.item_index, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(order)) - starts[self.item_index[order]]
        out[self.item_index[order], slot] = x[order]
        mask[self.item_index[order], slot] = True
        return out, mask

    def repool(self, how: str, pool_weights: Any = None) -> LayerStates:
        """Pool token-level states into one vector per item (e.g. to compare poolings)."""
        rows = []
        for layer in self.layers:
            x, mask = self.padded(layer)
            scores = scores_for(pool_weights, x, layer) if how == "weighted" else None
            rows.append(pool(x, mask, how, scores=scores))
        return LayerStates(
            torch.stack(rows), list(self.layers), self.site, how, self.tokens, dict(self.provenance)
        )

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Atomic write: one safetensors file with the JSON description in its header."""
        tensors = {"states": self.states}
        if self.item_index is not None and self.positions is not None:
            tensors["item_index"] = self.item_index
            tensors["positions"] = self.positions
        meta = {
            "layers": self.layers,
            "site": self.site,
            "pool": self.pool,
            "tokens": self.tokens,
            "provenance": self.provenance,
        }
        return save_artifact(path, "LayerStates", tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True) -> LayerStates:
        """Read states saved by :meth:`save` (``verify``: check the tensors' checksum)."""
        tensors, meta = load_artifact(path, "LayerStates", verify=verify)
        return cls(*_checked_fields(path, tensors, meta))

    # ------------------------------------------------------------------ from a user's cache
    @classmethod
    def from_cache(
        cls,
        cache: Any,
        *,
        tokens: TokenSpec = "last",
        pool: str | None = "mean",
        attention_mask: Tensor | None = None,
        tokenized: Tokenized | None = None,
        layers: Sequence[int] | str = "all",
        site: str = "resid_post",
        pool_weights: Any = None,
        model: Any = None,
        texts: Sequence[str] | None = None,
    ) -> LayerStates:
        """The same ``LayerStates`` as :func:`extract_states`, from an ``ActivationCache``
        the user already has.

        To select tokens exactly as :func:`extract_states` does (``"all"`` = content tokens,
        without BOS/CLS/SEP/padding; spans by character offsets), say which texts made the
        cache: ``model=`` and ``texts=`` (the batch is re-tokenised the way TransformerLens
        does, right padded, and must match the cache's shape), or the ``Tokenized`` batch
        itself (``tokenized=semhooks.adapt(model).tokenize(texts)``). With only an
        ``attention_mask`` (or nothing), every attended token counts as content, so
        ``"all"`` includes BOS (and ``"last"`` a BERT's ``[SEP]``): that case warns.
        """
        from semhooks.backend.adapter import SITES
        from semhooks.backend.sites import layers_in
        from semhooks.errors import SemhooksWarning

        if site not in SITES:
            raise ValueError(f"unknown site {site!r}; choose one of {sorted(SITES)}")
        keys = list(cache.keys())
        pattern = SITES[site]
        if layers == "all":
            layer_list = layers_in(keys, site) if site != "embed" else [0]
        else:
            layer_list = [int(x) for x in layers]  # type: ignore[union-attr]
        if not layer_list:
            raise ValueError(f"the cache holds no {pattern} hooks; cached: {keys[:5]}...")
        first = cache[pattern.format(layer=layer_list[0])]
        b, t = first.shape[:2]
        if tokenized is None and (model is not None or texts is not None):
            if model is None or texts is None:
                raise ValueError("from_cache needs both model= and texts= (or tokenized=)")
            tokenized = adapt(model).tokenize(list(texts), padding_side="right")
            if tuple(tokenized.input_ids.shape) != (b, t):
                raise ValueError(
                    f"the texts tokenise to {tuple(tokenized.input_ids.shape)} but the cache "
                    f"holds [{b}, {t}] positions: were they run with another padding side or "
                    "BOS setting? Pass tokenized= with the batch that made the cache"
                )
        elif tokenized is None and isinstance(tokens, str) and tokens == "all":
            warnings.warn(
                f"LayerStates.from_cache(tokens={tokens!r}) without texts: every attended "
                "token counts as content, BOS and CLS/SEP included, unlike extract_states; pass "
                "model= and texts= (or tokenized=) for the same selection",
                SemhooksWarning,
                stacklevel=2,
            )
        if tokenized is None:
            mask = (
                attention_mask if attention_mask is not None else torch.ones(b, t, dtype=torch.long)
            )
            tokenized = Tokenized(
                texts=[""] * b,
                input_ids=torch.zeros(b, t, dtype=torch.long),
                attention_mask=mask.long().cpu(),
                offsets=torch.zeros(b, t, 2, dtype=torch.long),
                special=torch.zeros(b, t, dtype=torch.bool),
                padding_side="left" if bool((mask[:, 0] == 0).any()) else "right",
                truncated=[False] * b,
            )
        selection = select_tokens(tokenized, tokens)
        out = []
        for layer in layer_list:
            name = pattern.format(layer=layer)
            if name not in keys:
                raise KeyError(f"the cache has no {name!r}; run_with_cache must include it")
            acts = cache[name].detach().float().cpu()
            out.append(_pool_or_keep(acts, selection, pool, pool_weights, layer))
        return _assemble(
            out,
            layer_list,
            site,
            pool,
            _describe_tokens(tokens),
            {"source": "ActivationCache"},
            selection,
            tokenized,
        )


def _checked_fields(
    path: str | os.PathLike[str], tensors: dict[str, Tensor], meta: dict[str, Any]
) -> tuple[Any, ...]:
    """LayerStates fields from an artifact, after checking the metadata fits the tensors."""
    from semhooks.backend.adapter import SITES

    def bad(what: str) -> ArtifactError:
        return ArtifactError(f"{path} is not valid LayerStates: {what}")

    states = tensors.get("states")
    if states is None or states.ndim != 3:
        raise bad("no 'states' tensor [layers, items, d]")
    layers = meta.get("layers")
    if (
        not isinstance(layers, list)
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers)
        or len(set(layers)) != len(layers)
    ):
        raise bad(f"'layers' must be a list of distinct layer indices, got {layers!r}")
    if len(layers) != states.shape[0]:
        raise bad(f"'layers' names {len(layers)} layers but 'states' holds {states.shape[0]}")
    site, how, tokens = meta.get("site"), meta.get("pool"), meta.get("tokens")
    if site not in SITES:
        raise bad(f"unknown site {site!r}")
    if how is not None and how not in POOLS:
        raise bad(f"unknown pooling {how!r}")
    if not isinstance(tokens, str):
        raise bad(f"'tokens' must be a string, got {tokens!r}")
    provenance = meta.get("provenance", {})
    if not isinstance(provenance, dict):
        raise bad(f"'provenance' must be an object, got {type(provenance).__name__}")
    item_index, positions = tensors.get("item_index"), tensors.get("positions")
    if how is None:
        for name, t in (("item_index", item_index), ("positions", positions)):
            if t is None or t.ndim != 1 or t.shape[0] != states.shape[1]:
                raise bad(f"token-level states (pool=None) need a '{name}' of {states.shape[1]}")
    elif item_index is not None or positions is not None:
        raise bad(f"pooled states (pool={how!r}) carry token indices")
    return states, layers, site, how, tokens, provenance, item_index, positions


def _pool_or_keep(
    acts: Tensor, selection: Tensor, how: str | None, pool_weights: Any, layer: int
) -> Any:
    if how is None:
        return acts[selection]
    scores = scores_for(pool_weights, acts, layer) if how == "weighted" else None
    return pool(acts, selection, how, scores=scores)


def _token_index(
    selection: Tensor, batch: Tokenized, item_ids: Sequence[int]
) -> tuple[Tensor, Tensor]:
    rows, cols = selection.nonzero(as_tuple=True)
    n = batch.attention_mask.sum(-1)
    start = (
        (batch.attention_mask.shape[1] - n) if batch.padding_side == "left" else torch.zeros_like(n)
    )
    items = torch.as_tensor(list(item_ids), dtype=torch.long)[rows]
    return items, cols - start[rows]


def _assemble(
    per_layer: list[Tensor],
    layers: list[int],
    site: str,
    how: str | None,
    tokens: str,
    provenance: dict[str, Any],
    selection: Tensor,
    batch: Tokenized,
) -> LayerStates:
    item_index = positions = None
    if how is None:
        item_index, positions = _token_index(selection, batch, range(len(batch)))
        provenance = {**provenance, "n_items": len(batch)}
    return LayerStates(
        torch.stack(per_layer), layers, site, how, tokens, provenance, item_index, positions
    )


# ---------------------------------------------------------------------- extraction
def _batches(
    adapter: ModelAdapter, texts: list[str], batch_size: int, sort: bool
) -> list[list[int]]:
    order = list(range(len(texts)))
    if sort and len(texts) > batch_size:
        lengths = [
            len(ids) for ids in adapter.tokenizer(texts, add_special_tokens=True)["input_ids"]
        ]
        order.sort(key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class _Collector:
    """Hook closures that pool each layer's activations into a preallocated buffer."""

    def __init__(
        self, layers: list[int], site: str, how: str | None, pool_weights: Any, stop_at: str
    ):
        self.layers = layers
        self.site = site
        self.how = how
        self.pool_weights = pool_weights
        self.stop_at = stop_at
        self.selection: Tensor | None = None
        self.results: dict[int, Tensor] = {}

    def hook_for(self, layer: int, name: str) -> Callable[[Tensor, Any], None]:
        def hook(acts: Tensor, hook: Any = None) -> None:
            assert self.selection is not None
            sel = self.selection.to(acts.device)
            self.results[layer] = (
                _pool_or_keep(acts, sel, self.how, self.pool_weights, layer).float().cpu()
            )
            if name == self.stop_at:
                raise StopForward

        return hook


def _plan_extraction(
    model: Any,
    texts: Sequence[str],
    layers: int | Sequence[int] | str,
    site: str,
    tokens: TokenSpec,
    pool: str | None,
    batch_size: int,
) -> tuple[ModelAdapter, list[str], list[int], TokenSpec, dict[str, Any]]:
    """Validate an extraction request: ``(adapter, texts, layers, selector, provenance)``."""
    adapter = adapt(model)
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("extract_states got an empty list of texts")
    if pool is not None and pool not in POOLS:
        raise ValueError(f"unknown pooling {pool!r}; choose one of {POOLS} or None")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    adapter.require_eval()
    layer_list = adapter.resolve_layers(layers) if site != "embed" else [0]
    names = {layer: adapter.hook_name(site, layer) for layer in layer_list}
    selector = _as_selector(tokens)
    if not isinstance(selector, str) and not isinstance(selector, Spans):
        if len(selector) != len(texts):
            raise ValueError(f"{len(selector)} explicit positions for {len(texts)} texts")
    if isinstance(selector, Spans) and isinstance(selector.source, list):
        if len(selector.source) != len(texts):
            raise ValueError(f"{len(selector.source)} spans given for {len(texts)} texts")
    provenance = adapter.provenance(
        hook_names=[names[layer] for layer in layer_list], n_items=len(texts)
    )
    return adapter, texts, layer_list, selector, provenance


def extract_states(
    model: Any,
    texts: Sequence[str],
    layers: int | Sequence[int] | str = "all",
    site: str = "resid_post",
    tokens: TokenSpec = "last",
    pool: str | None = "mean",
    *,
    pool_weights: Any = None,
    batch_size: int = 16,
    padding_side: str = "right",
    truncate: bool = False,
    sort_by_length: bool = True,
    progress: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
    shard_size: int = 1024,
) -> Any:
    """Per-layer states of chosen tokens, pooled inside the hook.

    Args:
        model: a TransformerBridge, HookedTransformer or :class:`ModelAdapter`.
        texts: the texts (a list of non-empty strings).
        layers: ``"all"``, a layer or a list of layers (negative indices allowed).
        site: ``resid_pre | resid_mid | resid_post | attn_out | mlp_out | embed``.
        tokens: which tokens to read, see :func:`select_tokens`.
        pool: ``mean | max | last | first | weighted`` over the selected tokens, or ``None``
            to keep one row per selected token.
        pool_weights: for ``pool="weighted"``: a fitted :class:`AttentionPooler` or a
            callable ``(acts [batch, pos, d], layer) -> scores [batch, pos]``.
        batch_size: texts per forward pass (batches are formed by length to cut padding).
        padding_side: ``"right"`` or ``"left"``; results do not depend on it.
        truncate: cut texts longer than the context window (flagged in provenance) instead
            of raising.
        out_dir: stream pooled states to shards of ``shard_size`` items in this folder (for
            corpora larger than memory); returns a :class:`ShardedStates`. Re-running with
            the same arguments recomputes only the missing or damaged shards (a damaged
            ``manifest.json`` is rebuilt). The folder is keyed by a content hash of every
            input (model weights and tokenizer, texts, token selection, pooling weights,
            layers, site, pooling): any other extraction into it raises ``ArtifactError``
            naming what differs, and a second process writing it at the same time raises
            :class:`FolderLockedError`.
        shard_size: items per shard file (an integer >= 1).

    Returns:
        :class:`LayerStates` with ``states[n_layers, n_items, d_model]`` (float32, CPU).
    """
    texts, tokens = from_columns(texts), from_columns(tokens, columns=("span",))
    adapter, texts, layer_list, selector, provenance = _plan_extraction(
        model, texts, layers, site, tokens, pool, batch_size
    )
    shard_size = check_shard_size(shard_size)
    if out_dir is not None:
        return _extract_sharded(
            adapter,
            texts,
            layer_list,
            site,
            selector,
            pool,
            pool_weights,
            batch_size,
            padding_side,
            truncate,
            sort_by_length,
            progress,
            Path(out_dir),
            shard_size,
            provenance,
        )
    return _extract(
        adapter,
        texts,
        layer_list,
        site,
        selector,
        pool,
        pool_weights,
        batch_size,
        padding_side,
        truncate,
        sort_by_length,
        progress,
        provenance,
        range(len(texts)),
    )


def _extract(
    adapter: ModelAdapter,
    texts: list[str],
    layer_list: list[int],
    site: str,
    selector: TokenSpec,
    how: str | None,
    pool_weights: Any,
    batch_size: int,
    padding_side: str,
    truncate: bool,
    sort_by_length: bool,
    progress: bool,
    provenance: dict[str, Any],
    global_ids: Sequence[int],
) -> LayerStates:
    names = {layer: adapter.hook_name(site, layer) for layer in layer_list}
    deepest = names[max(layer_list, key=lambda la: adapter.site_depth(site, la))]
    collector = _Collector(layer_list, site, how, pool_weights, stop_at=deepest)
    hooks = [(names[layer], collector.hook_for(layer, names[layer])) for layer in layer_list]
    n = len(texts)
    pooled = torch.empty(len(layer_list), n, adapter.d_model) if how is not None else None
    token_rows: list[list[Tensor]] = [[] for _ in layer_list]
    item_parts: list[Tensor] = []
    pos_parts: list[Tensor] = []
    n_truncated = 0
    batches = _batches(adapter, texts, batch_size, sort_by_length)
    for idx in tqdm(batches, desc="extract_states", disable=not progress, unit="batch"):
        batch = adapter.tokenize(
            [texts[i] for i in idx], padding_side=padding_side, truncate=truncate
        )
        n_truncated += sum(batch.truncated)
        gids = [global_ids[i] for i in idx]
        collector.selection = select_tokens(batch, selector, gids)
        collector.results = {}
        adapter.forward(batch, hooks, return_logits=False)
        missing = [la for la in layer_list if la not in collector.results]
        if missing:
            raise RuntimeError(f"hooks for layers {missing} did not fire on {adapter.name}")
        if how is not None:
            assert pooled is not None
            for li, layer in enumerate(layer_list):
                pooled[li, idx] = collector.results[layer]
        else:
            items, pos = _token_index(collector.selection, batch, idx)
            item_parts.append(items)
            pos_parts.append(pos)
            for li, layer in enumerate(layer_list):
                token_rows[li].append(collector.results[layer])
    provenance = {**provenance, "n_truncated": n_truncated, "pool": how, "site": site}
    if how is not None:
        assert pooled is not None
        return LayerStates(pooled, layer_list, site, how, _describe_tokens(selector), provenance)
    items = torch.cat(item_parts)
    order = torch.argsort(items * (1 << 20) + torch.cat(pos_parts), stable=True)
    states = torch.stack([torch.cat(rows)[order] for rows in token_rows])
    return LayerStates(
        states,
        layer_list,
        site,
        None,
        _describe_tokens(selector),
        provenance,
        items[order],
        torch.cat(pos_parts)[order],
    )


# ---------------------------------------------------------------------- streaming shards
_SHARD_NAME = "shard-{k:05d}.safetensors"
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


def _read_manifest(path: Path) -> dict[str, Any]:
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


def _config_difference(old: Any, new: dict[str, Any]) -> str:
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
        return cls(Path(folder), _read_manifest(path))

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


def _shard_config(
    adapter: ModelAdapter,
    texts: list[str],
    layer_list: list[int],
    site: str,
    selector: TokenSpec,
    how: str | None,
    shard_size: int,
    pool_weights: Any = None,
    truncate: bool = False,
) -> dict[str, Any]:
    """What a shard folder was made from; a resumed or merged extraction must match it.

    Every entry that decides the states is here as content: the model's weights and
    tokenizer (``model_sha256``), the texts, the token selection as applied to them, the
    pooling weights, layers, site, pooling, truncation and the semhooks version.
    """
    from semhooks.io.artifacts import semhooks_version

    weights = None
    if how == "weighted":
        weights = pool_weights_sha256(
            pool_weights, layer_list, adapter.d_model, adapter.device, adapter.dtype
        )
    return {
        "key_version": 2,
        "model": adapter.name,
        "hook_layout": adapter.hook_layout,
        "model_sha256": content_sha256(model_fingerprint(adapter)),
        "layers": layer_list,
        "site": site,
        "pool": how,
        "pool_weights_sha256": weights,
        "tokens": _describe_tokens(selector),
        "tokens_sha256": selection_sha256(selector, texts),
        "truncate": bool(truncate),
        "corpus_sha256": corpus_sha256(texts),
        "n_items": len(texts),
        "shard_size": shard_size,
        "semhooks_version": semhooks_version(),
    }


def _reusable_shards(
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
            manifest = _read_manifest(path)
        except ArtifactError:
            continue  # damaged: rebuilt from the shard files below
        if manifest["config"] != config:
            raise ArtifactError(
                f"{folder} holds shards of another extraction ({path.name}: "
                f"{_config_difference(manifest['config'], config)}); use a new out_dir"
            )
        for entry in manifest["shards"]:
            listed[f"{entry['file']}:{entry['sha256']}"] = entry
    size = int(config["shard_size"])
    done: dict[int, dict[str, Any]] = {}
    for k in range(-(-n_items // size)):
        path = folder / _SHARD_NAME.format(k=k)
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


def _extract_shard(
    adapter: ModelAdapter,
    texts: list[str],
    k: int,
    shard_size: int,
    folder: Path,
    provenance: dict[str, Any],
    layer_list: list[int],
    site: str,
    selector: TokenSpec,
    how: str | None,
    pool_weights: Any,
    batch_size: int,
    padding_side: str,
    truncate: bool,
    sort_by_length: bool,
    shard_key: str,
) -> dict[str, Any]:
    """Extract shard ``k`` (items ``k * shard_size ...``), save it, return its manifest entry.

    The shard's header records ``shard_key`` (the sha256 of the extraction config), so a
    resume can trust the file even when no manifest survived.
    """
    start = k * shard_size
    chunk = texts[start : start + shard_size]
    part = _extract(
        adapter,
        chunk,
        layer_list,
        site,
        selector,
        how,
        pool_weights,
        batch_size,
        padding_side,
        truncate,
        sort_by_length,
        False,
        {**provenance, "shard": k, "start": start, "shard_key": shard_key},
        range(start, start + len(chunk)),
    )
    name = _SHARD_NAME.format(k=k)
    part.save(folder / name)
    return {
        "file": name,
        "start": start,
        "n_items": len(chunk),
        "sha256": file_sha256(folder / name),
    }


def _extract_sharded(
    adapter: ModelAdapter,
    texts: list[str],
    layer_list: list[int],
    site: str,
    selector: TokenSpec,
    how: str | None,
    pool_weights: Any,
    batch_size: int,
    padding_side: str,
    truncate: bool,
    sort_by_length: bool,
    progress: bool,
    folder: Path,
    shard_size: int,
    provenance: dict[str, Any],
) -> ShardedStates:
    if how is None:
        raise ValueError("streaming to shards needs a pooling (pool=None keeps every token)")
    config = _shard_config(
        adapter, texts, layer_list, site, selector, how, shard_size, pool_weights, truncate
    )
    key = content_sha256(config)
    manifest_path = folder / "manifest.json"
    with folder_lock(folder):
        done = _reusable_shards(folder, config, len(texts))
        manifest: dict[str, Any] = {
            "config": config,
            "n_items": len(texts),
            "provenance": provenance,
            "shards": [done[k] for k in sorted(done)],
        }
        atomic_write_json(manifest_path, manifest)  # repairs a damaged one at once
        n_shards = -(-len(texts) // shard_size)
        for k in tqdm(range(n_shards), desc="shards", disable=not progress, unit="shard"):
            if k in done:
                continue
            done[k] = _extract_shard(
                adapter,
                texts,
                k,
                shard_size,
                folder,
                provenance,
                layer_list,
                site,
                selector,
                how,
                pool_weights,
                batch_size,
                padding_side,
                truncate,
                sort_by_length,
                key,
            )
            manifest["shards"] = [done[j] for j in sorted(done)]
            atomic_write_json(manifest_path, manifest)
    return ShardedStates(folder, manifest)


def stack_layers(states: Float[Tensor, "layer item d"]) -> Float[Tensor, "item layer d"]:
    """``[layer, item, d] -> [item, layer, d]`` (for per-item views across depth)."""
    return rearrange(states, "layer item d -> item layer d")
