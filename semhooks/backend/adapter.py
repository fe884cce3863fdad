"""Model access: one adapter over TransformerLens 4.x ``TransformerBridge`` and 3.x
``HookedTransformer``.

semhooks never requires that a model came from :func:`~semhooks.load_model`: every public
function accepts a bridge or a HookedTransformer that a user built in their own notebook, and
wraps it in a :class:`ModelAdapter` (:func:`adapt`). The adapter is the only door to the
model's backend: it resolves site names to hook names (:mod:`~semhooks.backend.sites`),
tokenises with character offsets (:mod:`~semhooks.backend.tokens`), applies the model's BOS
convention, always passes an attention mask (TransformerLens issue 1609: left padding without
a mask silently changes TransformerBridge outputs), runs the KV prefix cache
(:mod:`~semhooks.backend.kv`), and owns the final norm, ``W_U``, hook gating and hook order.

Nothing is written onto the model object: what semhooks remembers about a model lives in a
weak dictionary (:mod:`~semhooks.backend.state`).

Hooks are global state on the model: semhooks adds them only inside ``model.hooks(...)``
contexts, which remove them in ``finally`` even when a hook raises.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from semhooks.backend import kv, limits
from semhooks.backend.hooks import (
    ConcurrentUseError,
    HookFn,
    StopForward,
    active_hook_count,
    hook_gated_reason,
    move_hook_last,
    single_thread,
)
from semhooks.backend.offline import (
    KNOWN_MODELS,
    OFFLINE_PACKAGES,
    SMOLLM2_GGUF,
    cache_dir,
    cache_report,
    clear_cache,
    dequantised_dir,
    short_model_name,
)
from semhooks.backend.sites import SITES, HookSite, Site, parse_hook_name, site_hook_name
from semhooks.backend.state import ModelState, model_state
from semhooks.backend.tokens import Tokenized, tokenize_texts
from semhooks.version import __version__

__all__ = [
    "ENCODER_MODEL_TYPES",
    "KNOWN_MODELS",
    "OFFLINE_PACKAGES",
    "SITES",
    "SMOLLM2_GGUF",
    "ConcurrentUseError",
    "HookFn",
    "HookedModel",
    "ModelAdapter",
    "Site",
    "StopForward",
    "Tokenized",
    "active_hook_count",
    "adapt",
    "cache_dir",
    "cache_report",
    "clear_cache",
    "dequantised_dir",
    "leaked_hooks",
    "parse_hook_name",
    "seen_models",
    "short_model_name",
    "transformer_lens_version",
]

ENCODER_MODEL_TYPES = {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "mpnet"}


@runtime_checkable
class HookedModel(Protocol):
    """What semhooks needs from a model: TransformerLens' hook API and a config."""

    cfg: Any
    tokenizer: Any

    def hooks(self, fwd_hooks: list = ..., bwd_hooks: list = ..., **kwargs: Any) -> Any: ...

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...


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
        self._output_transform = limits.output_transform(model, self.backend)
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
        self.state: ModelState = model_state(model)
        self.model_type: str = self._model_type()
        self.is_encoder: bool = self.model_type in ENCODER_MODEL_TYPES
        self.name: str = name or short_model_name(
            str(self.state.name or getattr(cfg, "model_name", None) or cls)
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
        if self.state.baseline_hooks is None:
            # Some bridges keep internal hooks of their own; hygiene checks compare to this.
            self.state.baseline_hooks = active_hook_count(model)

    # ------------------------------------------------------------------ description
    def _model_type(self) -> str:
        hf = getattr(self.model, "original_model", None)
        config = getattr(hf, "config", None)
        if config is not None and getattr(config, "model_type", None):
            return str(config.model_type)
        if self.state.model_type:  # a HookedTransformer converted by semhooks
            return self.state.model_type
        arch = getattr(self.model.cfg, "original_architecture", None) or ""
        return str(arch).lower().replace("forcausallm", "").replace("lmheadmodel", "")

    @property
    def baseline_hooks(self) -> int:
        """Hooks the model carried when semhooks first adapted it."""
        return int(self.state.baseline_hooks or 0)

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
        return {
            "model": self.name,
            "model_type": self.model_type,
            "backend": self.backend,
            "transformer_lens_version": transformer_lens_version(),
            "semhooks_version": __version__,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "hook_layout": self.hook_layout,
            "prepend_bos": self.prepend_bos,
            "weights_processed": self.weights_processed,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **extra,
        }

    @property
    def weights_processed(self) -> bool:
        """Whether TransformerLens folded norms / centred weights (changes W_U, pinv, bases)."""
        cfg = self.model.cfg
        if self.backend == "hooked":
            processed = self.state.weights_processed
            return True if processed is None else bool(processed)
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
        """The hook name of ``site`` at ``layer`` on this model (TransformerLens style)."""
        name = site_hook_name(site, layer)
        # Refused by name where the site is missing or means something else (post-LN encoders).
        limits.check_site(self, site, name, layer)
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
        with single_thread(self.model, self.name), self.model.hooks(fwd_hooks=fwd_hooks):
            yield

    @staticmethod
    def parse_hook_name(name: str) -> HookSite:
        """``(site, layer, style)`` of a hook name in either naming style
        (:func:`~semhooks.backend.sites.parse_hook_name`)."""
        return parse_hook_name(name)

    def hook_gated_reason(self, name: str) -> str | None:
        """Why the model refuses a hook at ``name`` (None: it accepts one). TransformerBridge
        switches some hook points off (``use_hook_mlp_in``...)."""
        return hook_gated_reason(self.model, name)

    @staticmethod
    def move_hook_last(hook_point: Any, handle: Any) -> None:
        """Run the PyTorch forward hook behind ``handle`` after every other forward hook of
        ``hook_point`` (hooks run in insertion order)."""
        move_hook_last(hook_point, handle)

    def require_eval(self) -> None:
        """Refuse a model in training mode, or a dtype its bridge is known to mishandle."""
        limits.check_dtype(self)
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
        return tokenize_texts(
            self.tokenizer,
            texts,
            model_name=self.name,
            bos_token_id=self.bos_token_id,
            pad_token_id=self.pad_token_id,
            add_bos=self.prepend_bos if prepend_bos is None else prepend_bos,
            limit=min(max_length or self.n_ctx, self.n_ctx),
            padding_side=padding_side,
            truncate=truncate,
        )

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

    def logits_at(
        self,
        batch: Tokenized,
        positions: Sequence[Sequence[int]],
        fwd_hooks: list[tuple[str, HookFn]] | None = None,
    ) -> list[Float[Tensor, "k vocab"]]:
        """Logits at chosen positions of each row only (``positions[r]``: row ``r``'s).

        A decoder's forward stops after the last block; the final norm and the unembedding
        then run on those rows alone instead of every position (on SmolLM2 the 49,152-token
        head is about a fifth of a forward's multiply-adds). Equal to indexing
        :meth:`forward`'s logits (``tests/test_model.py`` checks it); encoders take the full
        forward. ``fwd_hooks`` run as in :meth:`forward` (an intervention's hooks too).
        """
        if len(positions) != batch.input_ids.shape[0]:
            raise ValueError(
                f"logits_at got positions for {len(positions)} rows, the batch has "
                f"{batch.input_ids.shape[0]}"
            )
        if self.is_encoder:
            full = self.forward(batch, fwd_hooks)
            assert full is not None
            return [full[r, list(pos)] for r, pos in enumerate(positions)]
        rows: list[Tensor] = []

        def take(x: Tensor, hook: Any) -> None:
            rows.extend(x[r, list(pos)] for r, pos in enumerate(positions))
            raise StopForward

        last = self.hook_name("resid_post", self.n_layers - 1)
        self.forward(batch, [*(fwd_hooks or []), (last, take)], return_logits=False)
        if len(rows) != len(positions):  # pragma: no cover - a hook that did not fire
            raise RuntimeError(f"hook {last} did not fire on {self.name}")
        with torch.inference_mode():
            logits = self.unembed(torch.cat(rows))
        return list(logits.split([len(pos) for pos in positions]))

    def logits(
        self, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch pos vocab"]:
        """One forward with the attention mask, returning logits: no hooks of its own, the
        caller's grad mode (what :func:`~semhooks.studies.steering.generate` steps with)."""
        return self.model(  # type: ignore[no-any-return]
            input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            return_type="logits",
        )

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
        return kv.kv_cache_unsupported(self)

    @functools.cached_property
    def hf_cache_kwarg(self) -> str | None:
        """The name the wrapped Hugging Face forward gives its KV cache argument (bridge)."""
        return kv.hf_cache_kwarg(self.model)

    @functools.cached_property
    def kv_attention_modules(self) -> list[Any]:
        """The bridge's attention components (those that update a KV cache)."""
        return kv.kv_attention_modules(self.model)

    def new_kv_cache(self) -> Any:
        """An empty KV cache for one row, in the backend's own cache type."""
        return kv.new_kv_cache(self)

    @staticmethod
    def kv_cache_length(cache: Any) -> int:
        """Positions held by a cache from :meth:`new_kv_cache`."""
        return kv.kv_cache_length(cache)

    @staticmethod
    def copy_kv_cache(cache: Any) -> Any:
        """An independent copy of a cache from :meth:`new_kv_cache` (running on a cache
        extends it in place; copy it to reuse a prefix)."""
        return kv.copy_kv_cache(cache)

    def forward_on_cache(
        self,
        input_ids: Int[Tensor, "1 pos"],
        cache: Any,
        fwd_hooks: list[tuple[str, HookFn]] | None = None,
    ) -> Tensor | None:
        """Run ``input_ids`` (one row, no padding) after the positions held in ``cache``,
        which is extended in place (copy it first to reuse a prefix). Autograd follows the
        caller's grad mode. Returns the logits, or None when a hook raised StopForward."""
        return kv.forward_on_cache(self, input_ids, cache, fwd_hooks)

    @property
    def prefix_cache_verified(self) -> bool | None:
        """Whether the KV-cached forward was checked equal to the full one (None: not yet).
        Kept per model (see :mod:`~semhooks.backend.state`), not per adapter."""
        return self.state.prefix_cache_verified

    @prefix_cache_verified.setter
    def prefix_cache_verified(self, value: bool | None) -> None:
        self.state.prefix_cache_verified = value

    @property
    def prefix_cache_error(self) -> float | None:
        """The relative error found by that check (None: not checked)."""
        return self.state.prefix_cache_error

    @prefix_cache_error.setter
    def prefix_cache_error(self, value: float | None) -> None:
        self.state.prefix_cache_error = value

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
        """Logits from residual states: final norm, the model's own unembedding head, then the
        model's post-unembedding transform (Gemma 2's final logit soft cap) where it has one."""
        logits = self.model.unembed(self.final_norm(x))
        transform = self._output_transform
        return logits if transform is None else transform(logits)

    def logit_lens_top(
        self, states: Float[Tensor, "n d_model"], top_k: int
    ) -> tuple[Int[Tensor, "n k"], Float[Tensor, "n k"], str]:
        """Top-k logit-lens tokens of raw residual states (final norm, then unembedding):
        ``(ids, logits, source)``. A decoder bridge reads them with TransformerLens'
        ``logit_readout`` (``source="transformer_lens"``), anything else with
        :meth:`unembed` (``"semhooks"``)."""
        if self.backend == "bridge" and not self.is_encoder:
            try:
                from transformer_lens.tools.analysis import logit_readout
            except ImportError:  # older TransformerLens: no tools.analysis
                pass
            else:
                out = logit_readout(self.model, states.to(self.device), top_k=top_k)
                assert out.top_ids is not None
                return out.top_ids.cpu(), out.values.float().cpu(), "transformer_lens"
        with torch.no_grad():
            logits = self.unembed(states.to(self.device)).float().cpu()
        top = logits.topk(top_k, dim=-1)
        return top.indices, top.values, "semhooks"

    def to_token_ids(self, strings: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(s, add_special_tokens=False)["input_ids"] for s in strings]


_SEEN_MODELS: weakref.WeakSet[Any] = weakref.WeakSet()
# model -> weak reference to its adapter: one adapter per model while anyone holds it; the
# adapter holds the model, so a strong value here would keep every model alive forever.
_ADAPTERS: weakref.WeakKeyDictionary[Any, weakref.ref[ModelAdapter]] = weakref.WeakKeyDictionary()
_ADAPTERS_LOCK = threading.Lock()


def seen_models() -> list[Any]:
    """Every live model semhooks has adapted (for hook-hygiene checks in tests)."""
    return list(_SEEN_MODELS)


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
    """The :class:`ModelAdapter` for ``model``.

    The same adapter is returned while anyone holds it; what it remembers about the model
    (:class:`~semhooks.backend.state.ModelState`) outlives it, for the model's lifetime.
    Nothing is written onto ``model``.
    """
    if isinstance(model, ModelAdapter):
        return model
    with _ADAPTERS_LOCK:
        try:
            ref = _ADAPTERS.get(model)
        except TypeError:  # not weak-referenceable: a fresh adapter each call
            return ModelAdapter(model)
        cached = ref() if ref is not None else None
        if cached is not None and cached.model is model:
            return cached
        adapter = ModelAdapter(model)
        _ADAPTERS[model] = weakref.ref(adapter)
        _SEEN_MODELS.add(model)
        return adapter


def __getattr__(name: str) -> Any:
    """``load_model`` moved to :mod:`semhooks.backend.loading` (which imports this module);
    it is still importable from here."""
    if name == "load_model":
        import importlib

        return importlib.import_module("semhooks.backend.loading").load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
