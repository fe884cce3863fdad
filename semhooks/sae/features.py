"""SAE features as data: encode states (token-level, pooled or streamed) and find the texts
that activate each feature most.

Pooling features is not pooling states: ``max_t f(h_t)`` (the feature fired somewhere in the
text) differs from ``f(mean_t h_t)``. :func:`extract_features` and :func:`encode_states`
(on token-level states) encode every token and then pool the *features*, per text, the way
``extract_states`` pools states; :func:`encode_states` on already pooled states encodes the
pooled vectors (say so in your write-up), and :func:`iter_features` does the same shard by
shard for a :class:`~semhooks.ShardedStates` folder, in constant memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.backend.adapter import adapt
from semhooks.extraction.states import extract_states

FEATURE_POOLS = ("max", "mean", "sum")


@dataclass
class SAEFeatures:
    """Feature activations ``acts [rows, d_sae]`` (dense float32, or sparse COO).

    Pooled (``pool`` set): one row per text. Token-level (``pool=None``): one row per token,
    ``item_index[row]`` its text and ``positions[row]`` its position in the unpadded token
    sequence (BOS included), as in :class:`~semhooks.LayerStates`.
    """

    acts: Float[Tensor, "row d_sae"]
    pool: str | None
    hook_name: str | None
    item_index: Int[Tensor, " row"] | None = None
    positions: Int[Tensor, " row"] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def dense(self) -> Float[Tensor, "row d_sae"]:
        return self.acts.to_dense() if self.acts.is_sparse else self.acts

    def feature(self, i: int) -> Float[Tensor, " row"]:
        """One feature's activations over the rows."""
        return self.dense[:, int(i)]

    def frequency(self) -> Float[Tensor, " d_sae"]:
        """Fraction of rows on which each feature is active (> 0)."""
        return (self.dense > 0).float().mean(0)


def _pool_rows(
    acts: Tensor, item_index: Tensor, positions: Tensor, n_items: int, how: str
) -> Tensor:
    """Pool token rows ``[rows, d_sae]`` into ``[n_items, d_sae]`` by ``item_index``."""
    out = acts.new_zeros(n_items, acts.shape[-1])
    idx = item_index.long()[:, None].expand_as(acts)
    if how == "max":
        return out.scatter_reduce(0, idx, acts, "amax", include_self=False)
    out = out.index_add(0, item_index.long(), acts)
    if how == "mean":
        counts = torch.bincount(item_index.long(), minlength=n_items).clamp_min(1)
        out = out / counts[:, None]
    return out


def _pick_layer(sae: Any, states: Any, layer: int | None) -> int:
    if layer is not None:
        return int(layer)
    try:
        _, sae_layer = sae.site_layer()
    except ValueError:
        sae_layer = None
    if sae_layer is not None and sae_layer in list(states.layers):
        return int(sae_layer)
    if len(states.layers) == 1:
        return int(states.layers[0])
    raise ValueError(
        f"the states hold layers {list(states.layers)} and the SAE reads {sae.hook_name!r}; "
        "say which layer to encode with layer=..."
    )


def encode_states(
    sae: Any,
    states: Any,
    layer: int | None = None,
    *,
    pool: str | None = None,
    sparse: bool = False,
) -> SAEFeatures:
    """Encode :class:`~semhooks.LayerStates` at one layer into feature activations.

    ``layer`` defaults to the SAE's layer (or the only layer held). Token-level states with
    ``pool`` in ``max | mean | sum`` are pooled per text *after* encoding; ``pool=None``
    keeps one row per token. Pooled states are encoded as they are.
    """
    if pool is not None and pool not in FEATURE_POOLS:
        raise ValueError(f"unknown feature pooling {pool!r}; choose one of {FEATURE_POOLS} or None")
    li = _pick_layer(sae, states, layer)
    with torch.no_grad():
        acts = sae.encode(states.layer(li))
    token_level = states.item_index is not None
    item_index, positions, how = states.item_index, states.positions, states.pool
    if token_level and pool is not None:
        acts = _pool_rows(acts, states.item_index, states.positions, states.n_items, pool)
        item_index, positions, how = None, None, pool
    elif not token_level and pool is not None and pool != states.pool:
        raise ValueError(
            f"these states were pooled ({states.pool!r}) before encoding; pass pool=None to "
            "encode them as they are, or extract token-level states (pool=None) to pool features"
        )
    prov = {**dict(states.provenance), "layer": li, "state_pool": states.pool}
    return SAEFeatures(acts.to_sparse() if sparse else acts, how, sae.hook_name, item_index,
                       positions, prov)  # fmt: skip


def iter_features(
    sae: Any, sharded: Any, layer: int | None = None, *, sparse: bool = True
) -> Iterator[Float[Tensor, "shard_item d_sae"]]:
    """Features of a :class:`~semhooks.ShardedStates` folder, one shard at a time.

    Reads one layer of one shard at a time (``ShardedStates.iter_layer``, checksums
    verified), so memory stays at one shard. Yields ``[shard_items, d_sae]`` tensors
    (sparse COO by default), in item order.
    """
    li = _pick_layer(sae, sharded, layer)
    for block in sharded.iter_layer(li):
        with torch.no_grad():
            f = sae.encode(block.float())
        yield f.to_sparse() if sparse else f


def extract_features(
    model: Any,
    sae: Any,
    texts: Sequence[str],
    *,
    tokens: Any = "all",
    pool: str | None = "max",
    batch_size: int = 16,
    chunk_size: int = 256,
    sparse: bool = False,
    progress: bool = False,
) -> SAEFeatures:
    """Read ``texts`` through ``model`` and return the SAE's features, pooled per text.

    Token-level states at the SAE's hook are extracted ``chunk_size`` texts at a time,
    encoded, pooled (``max | mean | sum`` over the tokens chosen by ``tokens``, as in
    :func:`~semhooks.extract_states`) or kept per token (``pool=None``), and only the
    features are kept (sparse COO with ``sparse=True``), so memory is one chunk of states.
    """
    site, layer = sae.site_layer()
    texts = list(texts)
    parts: list[SAEFeatures] = []
    starts = range(0, len(texts), max(1, int(chunk_size)))
    for start in tqdm(starts, disable=not progress, desc="SAE features"):
        chunk = texts[start : start + int(chunk_size)]
        sub_tokens = tokens
        if not isinstance(tokens, str) and isinstance(tokens, Sequence):
            sub_tokens = list(tokens)[start : start + len(chunk)]
        states = extract_states(model, chunk, [layer], site, sub_tokens, None,
                                batch_size=batch_size, progress=False)  # fmt: skip
        got = encode_states(sae, states, layer, pool=pool, sparse=False)
        if got.item_index is not None:
            got.item_index = got.item_index + start
        parts.append(got)
    acts = torch.cat([p.acts for p in parts])
    first = parts[0]
    return SAEFeatures(
        acts.to_sparse() if sparse else acts,
        pool,
        sae.hook_name,
        None if pool is not None else torch.cat([p.item_index for p in parts]),  # type: ignore[misc]
        None if pool is not None else torch.cat([p.positions for p in parts]),  # type: ignore[misc]
        {**first.provenance, "n_items": len(texts), "tokens": str(tokens)},
    )


@dataclass
class TopTexts:
    """The texts that activate each feature most: ``values[j, r]`` is the ``r``-th largest
    max-over-tokens activation of feature ``features[j]``, reached in
    ``texts[text_index[j, r]]`` at token ``tokens[j][r]`` (position ``positions[j, r]``)."""

    features: list[int]
    values: Float[Tensor, "feature k"]
    text_index: Int[Tensor, "feature k"]
    positions: Int[Tensor, "feature k"]
    tokens: list[list[str]]
    texts: list[str]

    def for_feature(self, feature: int) -> list[tuple[str, float, str]]:
        """``[(text, activation, token), ...]`` best first (texts where it is > 0)."""
        j = self.features.index(int(feature))
        return [
            (self.texts[int(t)], float(v), tok)
            for t, v, tok in zip(self.text_index[j], self.values[j], self.tokens[j], strict=True)
            if v > 0
        ]

    def table(self, feature: int, width: int = 70) -> str:
        """A short plain-text table for one feature."""
        rows = [f"feature {feature}"]
        for text, value, tok in self.for_feature(feature):
            rows.append(f"  {value:8.3f}  {tok!r:>12}  {text[:width]}")
        return "\n".join(rows)


def top_texts(
    model: Any,
    sae: Any,
    texts: Sequence[str],
    features: Sequence[int] | None = None,
    k: int = 5,
    *,
    batch_size: int = 16,
    chunk_size: int = 256,
    progress: bool = False,
) -> TopTexts:
    """The ``k`` texts with the largest activation of each feature (max over all tokens).

    ``features`` defaults to every feature; ties keep the earlier text.
    """
    texts = list(texts)
    tok = extract_features(model, sae, texts, tokens="all", pool=None, batch_size=batch_size,
                           chunk_size=chunk_size, progress=progress)  # fmt: skip
    assert tok.item_index is not None and tok.positions is not None
    feats = list(range(int(sae.d_sae))) if features is None else [int(f) for f in features]
    acts = tok.dense[:, feats]
    n = len(texts)
    per_text = torch.full((n, len(feats)), -1.0).scatter_reduce(
        0, tok.item_index.long()[:, None].expand_as(acts), acts, "amax", include_self=False
    )
    kk = min(int(k), n)
    # stable sort (largest first) so ties keep the earlier text
    order = torch.sort(per_text.T, dim=1, descending=True, stable=True)
    values, text_index = order.values[:, :kk], order.indices[:, :kk]
    positions = torch.zeros_like(text_index)
    words: list[list[str]] = []
    adapter = adapt(model)
    ids_of: dict[int, Tensor] = {}
    for j in range(len(feats)):
        row_words = []
        for r in range(kk):
            t = int(text_index[j, r])
            rows = (tok.item_index == t).nonzero().flatten()
            best = rows[int(torch.argmax(acts[rows, j]))]
            positions[j, r] = tok.positions[best]
            if t not in ids_of:
                ids_of[t] = adapter.tokenize([texts[t]]).input_ids[0]
            token_id = int(ids_of[t][positions[j, r]])
            row_words.append(str(adapter.tokenizer.decode([token_id])))
        words.append(row_words)
    return TopTexts(feats, values, text_index, positions, words, texts)
