"""A sparse autoencoder as a scikit-learn-shaped estimator: encode, decode, save, load.

Equations (``x`` an activation ``[..., d_in]``, ``x_c = x - b_dec`` when
``apply_b_dec_to_input`` else ``x``, ``pre = x_c W_enc + b_enc``):

- ``standard`` (ReLU): ``f = ReLU(pre)``
- ``topk``: ``f`` keeps the ``k`` largest entries of ``pre`` (then ReLU), zeros elsewhere
- ``jumprelu`` (Rajamanoharan et al. 2024b): ``f = ReLU(pre) * [pre > threshold]``
- ``gated`` (Rajamanoharan et al. 2024a): ``f = [x_c W_enc + b_gate > 0] *
  ReLU(x_c (W_enc * exp(r_mag)) + b_mag)``

and for all of them ``decode(f) = f W_dec + b_dec``. Learned tensors are float32 on the CPU;
encode/decode compute in float32 on the activation's device and return float32.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import Tensor

from semhooks.io.artifacts import atomic_write_bytes, atomic_write_json
from semhooks.sae.config import (
    ARCHITECTURES,
    WEIGHTS,
    SAEConfig,
    SAEConfigError,
    parse_config,
)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)$")


def _shapes(d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
    return {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
        "b_enc": (d_sae,),
        "threshold": (d_sae,),
        "b_gate": (d_sae,),
        "r_mag": (d_sae,),
        "b_mag": (d_sae,),
    }


class SparseAutoencoder(TransformerMixin, BaseEstimator):
    """A sparse autoencoder over one hook's activations (SAELens-compatible weights).

    Hyper-parameters (``__init__``): ``architecture`` (``standard | topk | jumprelu |
    gated``), ``d_in``, ``d_sae``, ``k`` (top-k only), ``apply_b_dec_to_input`` and
    ``hook_name`` (the TransformerLens hook it reads, e.g. ``blocks.6.hook_resid_post``).
    Learned attributes: ``W_enc_ [d_in, d_sae]``, ``W_dec_ [d_sae, d_in]``, ``b_dec_ [d_in]``
    and, by architecture, ``b_enc_``, ``threshold_``, ``b_gate_``, ``r_mag_``, ``b_mag_``
    (``[d_sae]``), plus ``metadata_`` (provenance). Set them with :meth:`set_weights`,
    :func:`load_sae` or :class:`semhooks.sae.SAETrainer`; before that every method raises
    scikit-learn's ``NotFittedError``.
    """

    def __init__(
        self,
        architecture: str = "standard",
        d_in: int | None = None,
        d_sae: int | None = None,
        k: int | None = None,
        apply_b_dec_to_input: bool = True,
        hook_name: str | None = None,
    ) -> None:
        self.architecture = architecture
        self.d_in = d_in
        self.d_sae = d_sae
        self.k = k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.hook_name = hook_name

    # ------------------------------------------------------------------ weights
    def config(self) -> SAEConfig:
        """The hyper-parameters as an :class:`SAEConfig` (validated)."""
        if self.architecture not in ARCHITECTURES:
            raise SAEConfigError(
                f"architecture {self.architecture!r} is not implemented; use one of {ARCHITECTURES}"
            )
        if self.d_in is None or self.d_sae is None:
            raise SAEConfigError("SparseAutoencoder needs d_in and d_sae")
        if self.architecture == "topk" and (self.k is None or not 1 <= self.k <= self.d_sae):
            raise SAEConfigError(f"a top-k SAE needs 1 <= k <= d_sae={self.d_sae}; got k={self.k}")
        meta = dict(getattr(self, "metadata_", {}))
        return SAEConfig(
            self.architecture,
            int(self.d_in),
            int(self.d_sae),
            self.k,
            bool(self.apply_b_dec_to_input),
            self.hook_name,
            meta,
        )

    def set_weights(
        self, tensors: dict[str, Tensor], metadata: dict[str, Any] | None = None
    ) -> SparseAutoencoder:
        """Install learned tensors (names as in SAELens: ``W_enc``, ``b_enc``, ...).

        Refuses a missing or extra tensor and a wrong shape, naming it.
        """
        cfg = self.config()
        need = set(WEIGHTS[cfg.architecture])
        missing, extra = sorted(need - set(tensors)), sorted(set(tensors) - need)
        if missing or extra:
            raise SAEConfigError(
                f"a {cfg.architecture!r} SAE needs tensors {sorted(need)}; missing {missing}, "
                f"not understood {extra}"
            )
        shapes = _shapes(cfg.d_in, cfg.d_sae)
        for name in need:
            t = tensors[name]
            if tuple(t.shape) != shapes[name]:
                raise SAEConfigError(
                    f"tensor {name!r} has shape {tuple(t.shape)}; a {cfg.architecture!r} SAE "
                    f"with d_in={cfg.d_in}, d_sae={cfg.d_sae} needs {shapes[name]}"
                )
            if not torch.isfinite(t).all():
                raise SAEConfigError(f"tensor {name!r} has non-finite entries")
            setattr(self, f"{name}_", t.detach().to("cpu", torch.float32).contiguous().clone())
        self.metadata_ = dict(metadata or {})
        self._device_copies: dict[Any, dict[str, Tensor]] = {}
        return self

    def weights(self) -> dict[str, Tensor]:
        """The learned tensors by their SAELens names (float32, CPU)."""
        check_is_fitted(self, "W_dec_")
        return {name: getattr(self, f"{name}_") for name in WEIGHTS[self.architecture]}

    def _on(self, device: Any) -> dict[str, Tensor]:
        check_is_fitted(self, "W_dec_")
        cache = self.__dict__.setdefault("_device_copies", {})
        key = str(device)
        current = self.weights()
        got = cache.get(key)
        if got is None or any(got["_src_" + n] is not t for n, t in current.items()):
            got = {n: t.to(device) for n, t in current.items()}
            got.update({"_src_" + n: t for n, t in current.items()})
            cache[key] = got
        return got

    # ------------------------------------------------------------------ encode / decode
    def _check_in(self, x: Tensor, width: int, what: str) -> None:
        if x.shape[-1] != width:
            raise ValueError(
                f"{what} has last dimension {x.shape[-1]}; this SAE ({self.hook_name or 'no hook'}) "
                f"expects {width}"
            )

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Feature activations ``f(x)`` (float32, same leading dims; see the module equations)."""
        w = self._on(x.device)
        self._check_in(x, int(self.d_in or 0), "the activation")
        xc = x.float()
        if self.apply_b_dec_to_input:
            xc = xc - w["b_dec"]
        if self.architecture == "gated":
            gate = (xc @ w["W_enc"] + w["b_gate"]) > 0
            mag = torch.relu(xc @ (w["W_enc"] * torch.exp(w["r_mag"])) + w["b_mag"])
            return mag * gate
        pre = xc @ w["W_enc"] + w["b_enc"]
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "jumprelu":
            return torch.relu(pre) * (pre > w["threshold"])
        top = torch.topk(pre, int(self.k or 0), dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def decode(self, f: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_in"]:
        """Reconstruction ``f W_dec + b_dec`` (float32)."""
        w = self._on(f.device)
        self._check_in(f, int(self.d_sae or 0), "the feature tensor")
        if f.is_sparse:
            f = f.to_dense()
        return f.float() @ w["W_dec"] + w["b_dec"]

    def reconstruct(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_in"]:
        """``decode(encode(x))``."""
        return self.decode(self.encode(x))

    __call__ = reconstruct

    def feature_direction(self, feature: int) -> Float[Tensor, " d_in"]:
        """Feature ``feature``'s decoder row ``W_dec[feature]`` (what adding the feature adds)."""
        check_is_fitted(self, "W_dec_")
        if not 0 <= int(feature) < int(self.d_sae or 0):
            raise IndexError(f"feature {feature} is out of range for d_sae={self.d_sae}")
        return self.W_dec_[int(feature)].clone()

    # ------------------------------------------------------------------ scikit-learn
    def fit(self, X: Any = None, y: Any = None) -> SparseAutoencoder:
        """An SAE is fitted by :class:`semhooks.sae.SAETrainer` or loaded; ``fit`` only checks."""
        check_is_fitted(self, "W_dec_")
        return self

    def transform(self, X: Any) -> np.ndarray:
        """``encode`` on a ``[n, d_in]`` array; returns a float32 array ``[n, d_sae]``."""
        return self.encode(torch.as_tensor(np.asarray(X, dtype=np.float32))).numpy()

    def inverse_transform(self, X: Any) -> np.ndarray:
        """``decode`` on a ``[n, d_sae]`` array."""
        return self.decode(torch.as_tensor(np.asarray(X, dtype=np.float32))).numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Fraction of variance explained: ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``."""
        x = torch.as_tensor(np.asarray(X, dtype=np.float32)) if not isinstance(X, Tensor) else X
        x = x.float().reshape(-1, x.shape[-1])
        return fraction_of_variance_explained(x, self.reconstruct(x))

    # ------------------------------------------------------------------ sites
    def site_layer(self) -> tuple[str, int]:
        """``(site, layer)`` of :attr:`hook_name` in semhooks' terms (``resid_post``, 6)."""
        m = _HOOK_RE.match(self.hook_name or "")
        if m is None:
            raise ValueError(
                f"the SAE's hook_name {self.hook_name!r} is not a semhooks site "
                "(blocks.<layer>.hook_resid_pre|resid_mid|resid_post|attn_out|mlp_out); set "
                "sae.hook_name, or pass layers= and site= to the intervention"
            )
        return m.group(2), int(m.group(1))

    # ------------------------------------------------------------------ I/O
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``cfg.json`` and ``sae_weights.safetensors`` (the SAELens layout), atomically."""
        from safetensors.torch import save

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        blob = save({n: t.contiguous() for n, t in self.weights().items()})
        atomic_write_bytes(out / WEIGHTS_FILE, blob)
        atomic_write_json(out / CFG_FILE, self.config().to_dict())
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, strict: bool = True) -> SparseAutoencoder:
        """Same as :func:`load_sae`."""
        return load_sae(folder, strict=strict)


def fraction_of_variance_explained(x: Tensor, x_hat: Tensor) -> float:
    """``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over rows ``[n, d]`` (float64)."""
    x64, r64 = x.double(), x_hat.double()
    sse = ((x64 - r64) ** 2).sum()
    sst = ((x64 - x64.mean(0)) ** 2).sum()
    return float(1.0 - sse / sst)


def load_sae(folder: str | os.PathLike[str], *, strict: bool = True) -> SparseAutoencoder:
    """Load an SAE saved in the SAELens layout from a local folder (safetensors, no pickle).

    ``strict=False`` accepts unknown provenance fields in ``cfg.json``; fields that change
    the computation are always checked (see :func:`semhooks.sae.config.parse_config`).
    """
    from safetensors.torch import load_file

    path = Path(folder)
    cfg_path, w_path = path / CFG_FILE, path / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{path} has no {p.name}; an SAE folder in the SAELens layout holds {CFG_FILE} "
                f"and {WEIGHTS_FILE}"
            )
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise SAEConfigError(f"{cfg_path} is not valid JSON: {exc}") from exc
    cfg = parse_config(raw, strict=strict)
    tensors = load_file(str(w_path))
    sae = SparseAutoencoder(
        cfg.architecture, cfg.d_in, cfg.d_sae, cfg.k, cfg.apply_b_dec_to_input, cfg.hook_name
    )
    try:
        return sae.set_weights(tensors, cfg.metadata)
    except SAEConfigError as exc:
        raise SAEConfigError(f"{w_path}: {exc}") from exc
