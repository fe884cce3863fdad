"""A small sparse-autoencoder trainer (top-k, or ReLU with an L1 penalty), scikit-learn shaped.

Enough to give tests and notebooks a real SAE on a model's states without a download; not a
replacement for SAELens' training at scale (no activation store, no ghost gradients/AuxK).

Training runs in a normalised space ``z = (x - mean) / s`` (``s`` the root mean squared
distance to the mean, per dimension), where one learning rate suits any model, and the
normalisation is then folded into the weights, so the saved SAE reads raw activations:
``W_enc = W_enc^z / s``, ``W_dec = s W_dec^z``, ``b_dec = mean + s b_dec^z``; feature
activations are unchanged by the fold.

Losses (batch mean): top-k ``||z - z_hat||^2``; ReLU ``||z - z_hat||^2 + l1_coefficient *
sum_i f_i ||W_dec^z_i||`` (the L1 weighted by decoder norms, so shrinking the decoder cannot
buy sparsity). Top-k decoder rows are renormalised to unit norm after each step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.io.artifacts import now_iso, semhooks_version
from semhooks.sae.model import SparseAutoencoder, fraction_of_variance_explained


def _as_matrix(X: Any, layer: int | None) -> tuple[Tensor, dict[str, Any]]:
    """``[n, d]`` float32 rows and provenance from an array, a tensor or LayerStates."""
    info: dict[str, Any] = {}
    if hasattr(X, "layers") and hasattr(X, "layer") and hasattr(X, "states"):
        layers = list(X.layers)
        if layer is None:
            if len(layers) != 1:
                raise ValueError(
                    f"these LayerStates hold layers {layers}; say which one with "
                    "SAETrainer(layer=...)"
                )
            layer = layers[0]
        prov = dict(getattr(X, "provenance", {}) or {})
        info = {"model_name": prov.get("model"), "site": X.site, "layer": int(layer),
                "pool": X.pool, "tokens": X.tokens}  # fmt: skip
        X = X.layer(layer)
    x = X.detach() if isinstance(X, Tensor) else torch.as_tensor(np.asarray(X))
    x = x.to("cpu", torch.float32)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"SAETrainer.fit needs states [n >= 2, d]; got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("SAETrainer.fit got non-finite states")
    return x, info


class SAETrainer(TransformerMixin, BaseEstimator):
    """Train a top-k or ReLU+L1 sparse autoencoder on states ``[n, d_in]``.

    Args:
        d_sae: number of features.
        architecture: ``"topk"`` or ``"standard"`` (ReLU + L1).
        k: active features per row (top-k).
        l1_coefficient: sparsity weight (standard).
        lr, n_steps, batch_size, seed: Adam's learning rate, steps, rows per step, and the
            seed of the initialisation and batch order (same seed, same SAE).
        layer: which layer of a multi-layer ``LayerStates`` to train on.
        hook_name: the hook the SAE reads; by default ``blocks.<layer>.hook_<site>`` from
            the LayerStates.
        progress: show a progress bar.

    Learned attributes: ``sae_`` (a fitted :class:`SparseAutoencoder`), ``fve_`` (fraction of
    variance explained on the training states), ``dead_fraction_`` (features that never fire
    on them), ``l0_`` (mean active features per row), ``loss_curve_``.
    """

    def __init__(
        self,
        d_sae: int = 512,
        architecture: str = "topk",
        k: int = 16,
        l1_coefficient: float = 3e-2,
        lr: float = 3e-3,
        n_steps: int = 1000,
        batch_size: int = 256,
        seed: int = 0,
        layer: int | None = None,
        hook_name: str | None = None,
        progress: bool = False,
    ) -> None:
        self.d_sae = d_sae
        self.architecture = architecture
        self.k = k
        self.l1_coefficient = l1_coefficient
        self.lr = lr
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.seed = seed
        self.layer = layer
        self.hook_name = hook_name
        self.progress = progress

    def _check(self) -> None:
        if self.architecture not in ("topk", "standard"):
            raise ValueError(
                f"SAETrainer trains architecture 'topk' or 'standard'; got {self.architecture!r}"
            )
        if self.architecture == "topk" and not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae={self.d_sae}; got k={self.k}")
        for name in ("d_sae", "n_steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")

    def fit(self, X: Any, y: Any = None) -> SAETrainer:
        """Train on ``X`` (``[n, d_in]`` array/tensor, or LayerStates) and set ``sae_``."""
        self._check()
        x, info = _as_matrix(X, self.layer)
        n, d = x.shape
        mean = x.mean(0)
        scale = float(((x - mean) ** 2).sum(1).mean().sqrt()) / d**0.5 or 1.0
        z = (x - mean) / scale
        g = torch.Generator().manual_seed(int(self.seed))
        topk = self.architecture == "topk"
        dec = torch.randn(self.d_sae, d, generator=g)
        dec = dec / dec.norm(dim=1, keepdim=True) * (1.0 if topk else 0.1)
        params = {
            "W_enc": torch.nn.Parameter(dec.T.clone() if topk else dec.T.clone() * 10.0),
            "b_enc": torch.nn.Parameter(torch.zeros(self.d_sae)),
            "W_dec": torch.nn.Parameter(dec.clone()),
            "b_dec": torch.nn.Parameter(torch.zeros(d)),
        }
        opt = torch.optim.Adam(params.values(), lr=float(self.lr))
        curve = []
        steps = tqdm(range(int(self.n_steps)), disable=not self.progress, desc="SAE")
        for _ in steps:
            idx = torch.randint(0, n, (min(int(self.batch_size), n),), generator=g)
            zb = z[idx]
            pre = (zb - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
            if topk:
                top = torch.topk(pre, int(self.k), dim=-1)
                f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            else:
                f = torch.relu(pre)
            z_hat = f @ params["W_dec"] + params["b_dec"]
            loss = ((zb - z_hat) ** 2).sum(-1).mean()
            if not topk:
                loss = (
                    loss
                    + float(self.l1_coefficient)
                    * (f * params["W_dec"].norm(dim=1)).sum(-1).mean()
                    * d
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if topk:
                with torch.no_grad():
                    norms = params["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-8)
                    params["W_dec"].div_(norms)
            curve.append(float(loss.detach()))
        w = {name: p.detach() for name, p in params.items()}
        weights = {
            "W_enc": w["W_enc"] / scale,
            "b_enc": w["b_enc"],
            "W_dec": w["W_dec"] * scale,
            "b_dec": mean + scale * w["b_dec"],
        }
        hook = self.hook_name
        if hook is None and "site" in info:
            hook = f"blocks.{info['layer']}.hook_{info['site']}"
        record: dict[str, Any] = {
            "trainer": {k: v for k, v in self.get_params().items() if k != "progress"},
            "states": info,
            "n_train": n,
            "semhooks_version": semhooks_version(),
            "date": now_iso(),
        }
        meta = {"model_name": info.get("model_name"), "hook_name": hook, "semhooks": record}
        sae = SparseAutoencoder(self.architecture, d, int(self.d_sae), int(self.k) if topk else None,
                                True, hook)  # fmt: skip
        self.sae_ = sae.set_weights(weights, meta)
        with torch.no_grad():
            feats = self.sae_.encode(x)
            self.fve_ = fraction_of_variance_explained(x, self.sae_.decode(feats))
            active = feats > 0
            self.dead_fraction_ = float((~active.any(0)).float().mean())
            self.l0_ = float(active.sum(1).float().mean())
        self.loss_curve_ = curve
        record.update(fve=self.fve_, dead_fraction=self.dead_fraction_, l0=self.l0_)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Feature activations of the trained SAE (``[n, d_sae]``)."""
        check_is_fitted(self, "sae_")
        x, _ = _as_matrix(X, self.layer)
        return self.sae_.transform(x.numpy())

    def score(self, X: Any, y: Any = None) -> float:
        """Fraction of variance the trained SAE explains on ``X``."""
        check_is_fitted(self, "sae_")
        x, _ = _as_matrix(X, self.layer)
        return self.sae_.score(x)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Save the trained SAE in the SAELens layout (see :meth:`SparseAutoencoder.save`)."""
        check_is_fitted(self, "sae_")
        return self.sae_.save(folder)

    def summary(self) -> str:
        """One line: features, architecture, variance explained, dead features, L0."""
        check_is_fitted(self, "sae_")
        return (
            f"SAE {self.architecture} d_sae={self.d_sae}: FVE {self.fve_:.3f}, dead features "
            f"{self.dead_fraction_:.1%}, L0 {self.l0_:.1f}"
        )
