"""Content fingerprints: the keys that decide whether a cached or resumed result may be reused.

A cache or resume key in semhooks is a sha256 of *everything* that determines the result:
the model's weights and tokenizer, the texts, the full token selection (positions,
substrings, span callables resolved on each text), pooling weights, layers, site, pooling
and recipe config. A key that differs means "recompute" (or refuse, saying which part
differs), never "reuse".

- :func:`content_sha256` hashes plain data through canonical JSON, so ``["ab", "c"]`` and
  ``["a", "bc"]`` can never collide (strings are quoted and escaped, lists delimited).
- :func:`weights_sha256` hashes every tensor of a model's ``state_dict`` (name, dtype,
  shape, bytes); tensors above ``2**20`` elements contribute 65,536 evenly strided elements
  plus their float64 sum and sum of squares, so another seed, a fine-tune or an in-place
  edit changes it while a 7B model is fingerprinted in seconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from semhooks.io.jsonable import to_jsonable

__all__ = [
    "content_sha256",
    "corpus_sha256",
    "file_sha256",
    "model_fingerprint",
    "pool_weights_sha256",
    "selection_sha256",
    "tokenizer_sha256",
    "weights_sha256",
]

_FULL = 1 << 20
_SAMPLE = 1 << 16


def _plain(obj: Any) -> Any:
    """The canonical plain form of a cache key's content: floats keep every bit, non-finite
    ones and tensors are tagged (see :func:`semhooks.io.jsonable.to_jsonable`)."""
    try:
        return to_jsonable(obj, nonfinite="tag", arrays="tagged")
    except TypeError as exc:
        raise TypeError(f"cannot fingerprint: {exc}") from exc


def file_sha256(path: Any) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_sha256(obj: Any) -> str:
    """sha256 of ``obj`` (nested dicts, lists, strings, numbers, tensors) as canonical JSON."""
    text = json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def corpus_sha256(texts: Sequence[str]) -> str:
    """sha256 of a list of texts; unambiguous (no separator a text could contain)."""
    return content_sha256(list(texts))


def _sums(flat: Tensor) -> Tensor:
    """``[sum, sum of squares]`` of a flat tensor in float64, ``_FULL`` elements at a time: a
    whole-tensor float64 copy of a 49k x 576 embedding is 226 MB (squared, twice that), of a
    7B model's embedding 1 GB."""
    total = torch.zeros(2, dtype=torch.float64, device=flat.device)
    for chunk in flat.split(_FULL):
        c = chunk.double()
        total += torch.stack([c.sum(), c.square().sum()])
    return total


def _tensor_bytes(t: Tensor) -> bytes:
    flat = t.detach().reshape(-1)
    if flat.numel() > _FULL:
        step = flat.numel() // _SAMPLE
        flat = torch.cat([flat[::step][:_SAMPLE].double(), _sums(flat)])
    flat = flat.to("cpu").contiguous()
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def weights_sha256(model: Any) -> str:
    """Fingerprint of a model's weights and buffers (see the module docstring)."""
    h = hashlib.sha256()
    with torch.no_grad():
        state = model.state_dict()
        for name in sorted(state):
            t = state[name]
            if not isinstance(t, Tensor):
                continue
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(_tensor_bytes(t))
    return h.hexdigest()


def tokenizer_sha256(tokenizer: Any) -> str:
    """Fingerprint of a tokenizer: its class, vocabulary and special tokens."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    special = getattr(tokenizer, "special_tokens_map", {}) or {}
    return content_sha256(
        {
            "class": type(tokenizer).__name__,
            "vocab": sorted(vocab.items()),
            "special": {str(k): str(v) for k, v in special.items()},
        }
    )


def model_fingerprint(model: Any) -> dict[str, Any]:
    """What identifies a model's behaviour: name, layout, BOS convention, weights, tokenizer."""
    from semhooks.backend.adapter import adapt

    a = adapt(model)
    return {
        "model": a.name,
        "model_type": a.model_type,
        "backend": a.backend,
        "hook_layout": a.hook_layout,
        "prepend_bos": a.prepend_bos,
        "weights_processed": a.weights_processed,
        "weights_sha256": weights_sha256(a.model),
        "tokenizer_sha256": tokenizer_sha256(a.tokenizer),
    }


def selection_sha256(selector: Any, texts: Sequence[str]) -> str:
    """sha256 of a token selection as applied to ``texts``.

    ``selector`` is what ``selection.as_selector`` returns: a word (``"last"``...), a
    :class:`~semhooks.extraction.spans.Spans` (its source is resolved on every text, so a callable
    is keyed by what it returns) or one explicit position list per text.
    """
    from semhooks.extraction.spans import Spans

    if isinstance(selector, str):
        return content_sha256({"word": selector})
    if isinstance(selector, Spans):
        specs = [selector.spec_for(i, text) for i, text in enumerate(texts)]
        return content_sha256(
            {
                "spans": specs,
                "occurrence": selector.occurrence,
                "part": selector.part,
            }
        )
    return content_sha256({"explicit": [_plain(p) for p in selector]})


def pool_weights_sha256(
    pool_weights: Any, layers: Sequence[int], d_model: int, device: Any, dtype: torch.dtype
) -> str | None:
    """sha256 of what pooling weights compute, or None without them.

    A fitted :class:`~semhooks.AttentionPooler` is keyed by its scorer vectors. A user
    callable cannot be read, so it is keyed by its qualified name and the scores it returns
    on a fixed seeded probe batch at every layer (another callable, or the same one with
    other weights, gives other scores).
    """
    from semhooks.extraction.pooling import is_learned_pooler

    if pool_weights is None:
        return None
    if is_learned_pooler(pool_weights):
        scorers = getattr(pool_weights, "scorers_", None)
        if scorers is None:
            raise ValueError("pool_weights is an AttentionPooler that is not fitted; fit it first")
        return content_sha256(
            {"AttentionPooler": {str(k): scorers[k].float() for k in sorted(scorers)}}
        )
    if not callable(pool_weights):
        raise TypeError(
            f"pool_weights must be callable or an AttentionPooler, got {type(pool_weights)}"
        )
    g = torch.Generator().manual_seed(1234)
    probe = torch.randn(2, 7, d_model, generator=g).to(device, dtype)
    outputs = {}
    with torch.no_grad():
        for layer in layers:
            scores = pool_weights(probe, layer)
            outputs[str(layer)] = torch.as_tensor(scores).detach().float().cpu()
    name = getattr(pool_weights, "__qualname__", type(pool_weights).__qualname__)
    return content_sha256({"callable": name, "probe_scores": outputs})
