"""SAE features as hooks: steer, clamp, ablate, splice, and a feature recorder.

Every object here is a plain TransformerLens hook ``fn(activation, hook)``, usable in
``model.run_with_hooks(tokens, fwd_hooks=[(sae.hook_name, hook)])``, and (except the
recorder) a :class:`semhooks.interventions.Intervention`, so ``semhooks.intervene``,
``steering_curve``, ``positions=`` and the hook-layer checks work as for any direction.
By default each acts where its SAE reads (the layer and site of ``sae.hook_name``).

Equations (``h`` the activation at a selected position, ``f = encode(h)``, ``d_i = W_dec[i]``):

- :func:`feature_steer` ``h + alpha d_i`` (a :class:`~semhooks.interventions.Steer` along
  the decoder row: what turning feature ``i`` up by ``alpha`` adds to the reconstruction).
- :func:`feature_ablate` ``h - (h . u) u``, ``u = d_i / ||d_i||`` (an
  :class:`~semhooks.interventions.Ablate`: the direction is removed whatever the feature's
  activation); for the SAE notion, "feature ``i`` off", use ``FeatureClamp(sae, i, 0.0)``.
- :class:`FeatureClamp` ``h + (value - f_i) d_i``: feature ``i`` set to ``value`` in the
  reconstruction, everything the SAE does not explain kept.
- :class:`Splice` ``decode(f') + (h - decode(f))`` with ``keep_error=True`` (the error term
  kept: with no feature edited this is ``h``), or ``decode(f')`` with ``keep_error=False``
  (the model runs on the SAE's reconstruction); ``f'`` is ``f`` with ``set_features``
  applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from semhooks.backend.adapter import adapt
from semhooks.interventions import Ablate, Intervention, InterventionError, Steer


def _where(sae: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``layers``/``site`` from the SAE's hook unless the caller gave layers."""
    if kwargs.get("layers") is None:
        site, layer = sae.site_layer()
        kwargs = {**kwargs, "layers": layer, "site": site}
    return kwargs


def feature_steer(sae: Any, feature: int, alpha: float = 1.0, **where: Any) -> Steer:
    """A :class:`Steer` along feature ``feature``'s decoder row: ``h + alpha W_dec[feature]``.

    ``where``: ``positions=``, ``layers=``, ``site=`` as for any intervention (default: the
    SAE's own layer and site).
    """
    return Steer(sae.feature_direction(feature), alpha, **_where(sae, where))


def feature_ablate(sae: Any, feature: int, alpha: float = 1.0, **where: Any) -> Ablate:
    """An :class:`Ablate` of feature ``feature``'s decoder direction (see the module notes)."""
    return Ablate(sae.feature_direction(feature), alpha, **_where(sae, where))


def _as_feature_values(sae: Any, values: Mapping[int, Any] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for k, v in (values or {}).items():
        i = int(k)
        if not 0 <= i < int(sae.d_sae):
            raise InterventionError(
                f"feature {k} is out of range for an SAE with d_sae={sae.d_sae}"
            )
        value = float(v)
        if value != value or value in (float("inf"), float("-inf")):
            raise InterventionError(f"feature {k}: the value must be finite, got {v!r}")
        out[i] = value
    return out


def _splice(sae: Any, h: Tensor, setf: dict[int, float], keep_error: bool) -> Tensor:
    """``decode(f') + (h - decode(f))`` or ``decode(f')``; see the module equations."""
    f = sae.encode(h)
    recon = sae.decode(f)
    if setf:
        idx = torch.tensor(list(setf), device=h.device)
        target = torch.tensor(list(setf.values()), device=h.device, dtype=f.dtype)
        rows = sae.W_dec_[list(setf)].to(h.device)
        recon = recon + (target - f[..., idx]) @ rows
    out = recon + (h.float() - sae.decode(f)) if keep_error else recon
    return out.to(h.dtype)


@dataclass(eq=False, repr=False)
class _SAEIntervention(Intervention):
    """Shared plumbing: an SAE, its layer/site as default, a size check against the model."""

    sae: Any

    def __post_init__(self) -> None:
        if getattr(self.sae, "W_dec_", None) is None:
            raise InterventionError(
                f"{type(self).__name__} needs a fitted SAE (load_sae(...) or SAETrainer().fit)"
            )
        if self.layers is None:
            self.site, self.layers = self.sae.site_layer()
        super().__post_init__()

    def check(self, model: Any) -> None:
        d = adapt(model).d_model
        if int(self.sae.d_in) != d:
            raise InterventionError(
                f"{type(self).__name__}: the SAE reads d_in={self.sae.d_in} but "
                f"{adapt(model).name} has d_model={d}; use an SAE trained on this model"
            )

    def to_dict(self) -> dict[str, Any]:
        raise InterventionError(
            f"{type(self).__name__} holds an SAE; save the SAE (sae.save(folder)) and the "
            "intervention's arguments instead of to_dict()"
        )


@dataclass(eq=False, repr=False)
class Splice(_SAEIntervention):
    """Replace the activation by the SAE's reconstruction (module equations).

    ``keep_error=True`` adds back ``h - decode(encode(h))``, so the forward is unchanged
    unless ``set_features`` (``{feature: value}``) edits features; ``keep_error=False`` runs
    the model on the reconstruction (the SAE's "spliced-in" loss).
    """

    keep_error: bool = True
    set_features: Mapping[int, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.set_features = _as_feature_values(self.sae, self.set_features)

    def _edit(
        self, h: Tensor, rows: Tensor | None, cols: Tensor | None, hook: Any, call: Any = None
    ) -> Tensor:
        return _splice(self.sae, h, dict(self.set_features or {}), self.keep_error)


@dataclass(eq=False, repr=False)
class FeatureClamp(_SAEIntervention):
    """Set feature ``feature`` to ``value``: ``h + (value - f_i(h)) W_dec[i]``.

    ``value=0`` switches the feature off (SAE-style ablation); clamping a feature to its
    own activation changes nothing. ``alpha`` is an alias of ``value`` (steering curves
    sweep it).
    """

    feature: int
    value: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.value = _as_feature_values(self.sae, {self.feature: self.value})[int(self.feature)]
        self.feature = int(self.feature)

    @property
    def alpha(self) -> float:
        return self.value

    def with_alpha(self, alpha: float) -> Intervention:
        return dataclasses.replace(self, value=alpha)

    def _edit(
        self, h: Tensor, rows: Tensor | None, cols: Tensor | None, hook: Any, call: Any = None
    ) -> Tensor:
        f_i = self.sae.encode(h)[..., self.feature]
        d_i = self.sae.feature_direction(self.feature).to(h.device)
        return (h.float() + (self.value - f_i)[..., None] * d_i).to(h.dtype)


@dataclass(eq=False)
class FeatureRecorder:
    """A read-only hook that stores ``encode(activation)`` at every call.

    ``features`` holds one ``[batch, pos, d_sae]`` tensor per call (a sparse COO tensor when
    ``sparse=True``; float32 on the CPU); ``only`` keeps a subset of features (columns in
    that order). Returns ``None``, so the forward is untouched.
    """

    sae: Any
    sparse: bool = False
    only: Sequence[int] | None = None
    features: list[Tensor] = field(default_factory=list, init=False)

    def __call__(self, activation: Tensor, hook: Any = None) -> None:
        with torch.no_grad():
            f = self.sae.encode(activation.detach())
            if self.only is not None:
                f = f[..., list(self.only)]
            f = f.cpu()
            self.features.append(f.to_sparse() if self.sparse else f)

    def fwd_hooks(self, model: Any) -> list[tuple[str, FeatureRecorder]]:
        """``[(hook_name, self)]`` at the SAE's hook on ``model``."""
        site, layer = self.sae.site_layer()
        return [(adapt(model).hook_name(site, layer), self)]

    def clear(self) -> None:
        self.features.clear()
