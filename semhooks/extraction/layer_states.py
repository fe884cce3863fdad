"""``LayerStates``: per-layer states of chosen tokens, their I/O, and the same from a user's
``ActivationCache``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from semhooks.backend.adapter import Tokenized, adapt
from semhooks.extraction.pooling import POOLS, pool, pool_or_keep, scores_for
from semhooks.extraction.reader import batch_from_ids
from semhooks.extraction.selection import TokenSpec, describe_tokens, select_tokens, token_index
from semhooks.io.artifacts import ArtifactError, load_artifact, save_artifact


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
            mask = attention_mask if attention_mask is not None else torch.ones(b, t)
            tokenized = batch_from_ids(torch.zeros(b, t, dtype=torch.long), mask)
        selection = select_tokens(tokenized, tokens)
        out = []
        for layer in layer_list:
            name = pattern.format(layer=layer)
            if name not in keys:
                raise KeyError(f"the cache has no {name!r}; run_with_cache must include it")
            acts = cache[name].detach().float().cpu()
            out.append(pool_or_keep(acts, selection, pool, pool_weights, layer))
        return _assemble(
            out,
            layer_list,
            site,
            pool,
            describe_tokens(tokens),
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
        item_index, positions = token_index(selection, batch, range(len(batch)))
        provenance = {**provenance, "n_items": len(batch)}
    return LayerStates(
        torch.stack(per_layer), layers, site, how, tokens, provenance, item_index, positions
    )


def stack_layers(states: Float[Tensor, "layer item d"]) -> Float[Tensor, "item layer d"]:
    """``[layer, item, d] -> [item, layer, d]`` (for per-item views across depth)."""
    return rearrange(states, "layer item d -> item layer d")
