"""Mutual-information estimators with scikit-learn-style ``fit`` / ``mi_``.

Three estimators of I(X; Y) for paired samples ``x: [n, dx]``, ``y: [n, dy]``, all reported
in **bits**:

- :class:`MINE`: the Donsker-Varadhan (DV) lower bound of Belghazi et al. 2018 ("MINE:
  Mutual Information Neural Estimation"), with an MLP critic on the concatenated pair,
  shuffled pairs standing in for the product of marginals, and the paper's moving-average
  gradient correction. This is the estimator used by Chen et al. 2024 ("Quantifying Semantic
  Emergence in Language Models", arXiv 2405.12617).
- :class:`InfoNCE`: the contrastive bound of van den Oord et al. 2018 / Poole et al. 2019,
  with a separable or bilinear critic. It can never exceed ``log2`` of the number of
  candidates it scores against.
- :class:`GaussianMI`: the closed form for jointly Gaussian variables, with the exact
  finite-sample bias correction of the log-determinants. Cheap, and a reference: it is exact
  for Gaussians and a lower bound on the MI of any distribution with the same covariance
  (hence blind to non-linear dependence).

Pitfalls the estimators surface rather than hide:

- Neural estimates are computed on **held-out** pairs, and the reported value is the mean over
  the last ``eval_window`` evaluations, never the maximum over training steps (the maximum is
  an upward-biased statistic). Every evaluation is kept in ``history_``.
- Lower bounds estimated from N samples saturate near ``log2 N`` (McAllester & Stratos 2020):
  ``MINE.ceiling_bits_`` and ``InfoNCE.bound_bits_`` say where. A deterministic map (e.g. a
  transformer block) has MI bounded only by ``log2(#distinct inputs)``; report that beside
  the estimate.
- Everything is seeded with a private ``torch.Generator``; the global RNG is not touched.
- Dimension versus sample size: a critic must be *learned* from the training split, and what
  it fits to noise costs it on held-out pairs (about ``dx*dy / (2 n_train ln 2)`` bits for a
  bilinear critic). On correlated Gaussians with n = 4000 (``benchmarks/mi_validation.py``)
  the neural estimators are within ~0.1-0.4 bits of the truth up to 4 bits at d = 16, recover
  about half of it at d = 64, and read ~0 at d = 576 even for 8 true bits, where
  :class:`GaussianMI` is within ~0.35 bits. For d in the hundreds, use :class:`GaussianMI`
  as the reference, or reduce the dimension first (any fixed map of x or y can only lower
  the MI, so the estimate stays a lower bound).

``correlated_gaussians`` makes pairs with a known MI and ``validate_estimator`` tabulates an
estimator's error on them.

This is a low-level module: it imports nothing else from semhooks.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = [
    "MINE",
    "InfoNCE",
    "GaussianMI",
    "MIEstimator",
    "NotFittedError",
    "ValidationRow",
    "correlated_gaussians",
    "validate_estimator",
    "validation_table_markdown",
]

ArrayLike2D: TypeAlias = "Tensor | np.ndarray"

_LN2 = math.log(2.0)
# Smallest held-out split a neural estimator accepts: below this the held-out estimate is
# noise and log2(n_eval) is a ceiling of a few bits.
_MIN_EVAL = 16
_MIN_TRAIN = 32


class NotFittedError(ValueError, AttributeError):
    """Raised when a fitted attribute or method is used before ``fit`` (as in scikit-learn)."""


class MIEstimator(Protocol):
    """Anything with ``fit(x, y) -> self`` and a fitted ``mi_`` in bits."""

    mi_: float

    def fit(self, x: Any, y: Any) -> Any: ...


# --------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------


def _as_2d(name: str, a: Any, who: str, dtype: torch.dtype) -> Tensor:
    if isinstance(a, Tensor):
        t = a.detach().to("cpu")
    elif isinstance(a, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(a))
    else:
        raise ValueError(
            f"{who}.fit: {name} must be a torch.Tensor or numpy.ndarray of shape [n, d]; "
            f"got {type(a).__name__}."
        )
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{who}.fit: {name} must be real-valued; got dtype {t.dtype}.")
    if t.ndim != 2:
        hint = f" For a single feature use {name}.reshape(-1, 1)." if t.ndim == 1 else ""
        raise ValueError(
            f"{who}.fit: {name} must be 2-D [n_samples, n_features]; got shape "
            f"{tuple(t.shape)} ({t.ndim}-D).{hint}"
        )
    if t.shape[1] == 0:
        raise ValueError(f"{who}.fit: {name} has no features (shape {tuple(t.shape)}).")
    t = t.to(dtype)
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad_rows = (~finite).any(dim=1).nonzero().flatten()
        raise ValueError(
            f"{who}.fit: {name} contains non-finite values (NaN or inf) in "
            f"{bad_rows.numel()} of {t.shape[0]} rows (first: row {int(bad_rows[0])}). "
            f"Drop or impute those rows in both x and y."
        )
    return t


def _check_pair(
    x: Any,
    y: Any,
    *,
    who: str,
    min_samples: Callable[[int, int], int],
    dtype: torch.dtype,
    hint: str = "",
) -> tuple[Tensor, Tensor]:
    xt = _as_2d("x", x, who, dtype)
    yt = _as_2d("y", y, who, dtype)
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(
            f"{who}.fit: x and y must hold the same number of paired samples (rows); got "
            f"x {tuple(xt.shape)} and y {tuple(yt.shape)}."
        )
    n, needed = xt.shape[0], min_samples(xt.shape[1], yt.shape[1])
    if n < needed:
        raise ValueError(
            f"{who}.fit: too few samples: got n={n} pairs, need at least {needed} for "
            f"dx={xt.shape[1]}, dy={yt.shape[1]} with these settings.{hint}"
        )
    return xt, yt


def _varying(a: Tensor) -> Tensor:
    """Columns of ``a`` that vary by more than rounding of their values: ``[d]`` bool.

    Scale-free: a feature measured in units of 1e-13 varies as much as one in units of 1
    (an absolute threshold such as ``std > 1e-12`` called it constant). Only spread at
    the level of floating-point rounding of the column's magnitude counts as constant.
    """
    std = a.std(dim=0)
    size = a.abs().amax(dim=0)
    eps = torch.finfo(a.dtype).eps
    return std > 8 * eps * size


def _standardize(a: Tensor, ref: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """z-score ``a`` with the mean and std of ``ref`` (default: ``a``); constant columns -> 0."""
    ref = a if ref is None else ref
    mean = ref.mean(dim=0)
    std = ref.std(dim=0)
    scale = torch.where(_varying(ref), std, torch.ones_like(std))
    return (a - mean) / scale, mean, scale


# --------------------------------------------------------------------------------------------
# scikit-learn parameter protocol without importing scikit-learn
# --------------------------------------------------------------------------------------------


class _Params:
    """``get_params`` / ``set_params`` / ``repr`` from the ``__init__`` signature (sklearn style)."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> _Params:
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise ValueError(
                    f"{type(self).__name__}.set_params: unknown parameter {k!r}; "
                    f"valid: {sorted(valid)}."
                )
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_fitted(self, what: str) -> None:
        if not hasattr(self, "mi_"):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call fit(x, y) before {what}."
            )


# --------------------------------------------------------------------------------------------
# Neural estimators
# --------------------------------------------------------------------------------------------


def _linear(d_in: int, d_out: int, g: torch.Generator) -> nn.Linear:
    # skip_init builds the layer without drawing from the global RNG; we draw from ``g``.
    lin = torch.nn.utils.skip_init(nn.Linear, d_in, d_out)
    bound = 1.0 / math.sqrt(d_in)
    with torch.no_grad():
        lin.weight.copy_(torch.empty(d_out, d_in).uniform_(-bound, bound, generator=g))
        lin.bias.copy_(torch.empty(d_out).uniform_(-bound, bound, generator=g))
    return lin


class _Dropout(nn.Module):
    """Dropout drawing its masks from a private generator (``nn.Dropout`` uses the global RNG)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, h: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return h
        if self.generator is None:
            raise RuntimeError("_Dropout used in training mode without a generator.")
        keep = torch.empty_like(h).bernoulli_(1.0 - self.p, generator=self.generator)
        return h * keep / (1.0 - self.p)


def _mlp(
    d_in: int, hidden: int, n_layers: int, d_out: int, dropout: float, g: torch.Generator
) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(n_layers):
        layers += [_linear(d, hidden, g), nn.ReLU()]
        if dropout > 0:
            layers.append(_Dropout(dropout))
        d = hidden
    layers.append(_linear(d, d_out, g))
    return nn.Sequential(*layers)


def _zero_output(net: nn.Sequential, *, bias: bool) -> None:
    last = net[-1]
    assert isinstance(last, nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        if bias:
            last.bias.zero_()


class _NeuralMI(_Params):
    """Shared training loop: seeded split, z-scoring, Adam, held-out evaluation, early stop."""

    hidden: int
    n_layers: int
    dropout: float
    lr: float | None
    weight_decay: float
    batch_size: int
    max_steps: int
    eval_every: int
    eval_window: int
    patience: int | None
    min_delta_bits: float
    eval_fraction: float
    standardize: bool
    seed: int
    progress: bool
    device: str | torch.device

    # ---- to be provided by subclasses
    def _build_critic(self, dx: int, dy: int, g: torch.Generator) -> nn.Module:
        raise NotImplementedError

    def _train_loss(self, critic: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
        raise NotImplementedError

    def _eval_nats(self, critic: nn.Module, x: Tensor, y: Tensor, g: torch.Generator) -> float:
        raise NotImplementedError

    def _reset_state(self) -> None:
        pass

    def _lr(self) -> float:
        assert self.lr is not None
        return self.lr

    def _finish(self, n_eval: int) -> None:
        pass

    # ---- shared
    def _split_sizes(self, n: int) -> tuple[int, int]:
        n_eval = max(_MIN_EVAL, int(round(n * self.eval_fraction)))
        return n - n_eval, n_eval

    def _min_samples(self, dx: int, dy: int) -> int:
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(
                f"{type(self).__name__}: eval_fraction must be in (0, 1); got {self.eval_fraction}."
            )
        # smallest n whose split leaves _MIN_TRAIN training and _MIN_EVAL held-out pairs
        n = _MIN_TRAIN + _MIN_EVAL
        while self._split_sizes(n)[0] < _MIN_TRAIN:
            n += 1
        return n

    def _check_params(self) -> None:
        who = type(self).__name__
        for name in ("hidden", "batch_size", "max_steps", "eval_every", "eval_window"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{who}: {name} must be a positive int; got {v!r}.")
        if self.n_layers < 1:
            raise ValueError(f"{who}: n_layers must be >= 1; got {self.n_layers}.")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"{who}: patience must be >= 1 or None; got {self.patience}.")
        if self._lr() <= 0:
            raise ValueError(f"{who}: lr must be > 0; got {self.lr}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{who}: dropout must be in [0, 1); got {self.dropout}.")
        if self.weight_decay < 0:
            raise ValueError(f"{who}: weight_decay must be >= 0; got {self.weight_decay}.")

    def fit(self, x: ArrayLike2D, y: ArrayLike2D) -> _NeuralMI:
        """Train the critic on a seeded training split and estimate I(X; Y) on the rest.

        Args:
            x: ``[n, dx]`` samples of X (torch tensor or numpy array).
            y: ``[n, dy]`` samples of Y, row ``i`` paired with ``x[i]``.

        Returns:
            ``self``, with ``mi_`` (bits), ``history_``, ``steps_`` and the attributes listed
            in the class docstring.
        """
        who = type(self).__name__
        self._check_params()
        xt, yt = _check_pair(x, y, who=who, min_samples=self._min_samples, dtype=torch.float32)
        n = xt.shape[0]
        n_train, n_eval = self._split_sizes(n)
        g = torch.Generator().manual_seed(int(self.seed))
        perm = torch.randperm(n, generator=g)
        tr, ev = perm[:n_train], perm[n_train:]
        x_tr, y_tr, x_ev, y_ev = xt[tr], yt[tr], xt[ev], yt[ev]
        if self.standardize:
            # MI is invariant to invertible per-feature affine maps, so z-scoring (with
            # training-split statistics) changes nothing but the critic's conditioning.
            x_ev, self.x_mean_, self.x_scale_ = _standardize(x_ev, x_tr)
            y_ev, self.y_mean_, self.y_scale_ = _standardize(y_ev, y_tr)
            x_tr = (x_tr - self.x_mean_) / self.x_scale_
            y_tr = (y_tr - self.y_mean_) / self.y_scale_
        dev = torch.device(self.device)
        x_tr, y_tr, x_ev, y_ev = (t.to(dev) for t in (x_tr, y_tr, x_ev, y_ev))

        critic = self._build_critic(xt.shape[1], yt.shape[1], g).to(dev)
        dropout_gen = torch.Generator(device=dev).manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=g))
        )
        for m in critic.modules():
            if isinstance(m, _Dropout):
                m.generator = dropout_gen
        opt = torch.optim.AdamW(critic.parameters(), lr=self._lr(), weight_decay=self.weight_decay)
        self._reset_state()
        batch = min(self.batch_size, n_train)
        eval_seed = int(torch.randint(0, 2**62, (1,), generator=g))

        history: list[float] = []
        steps: list[int] = []
        best, since_best, stopped = -math.inf, 0, False
        order = torch.randperm(n_train, generator=g)
        cursor = 0
        bar = tqdm(range(1, self.max_steps + 1), desc=who, disable=not self.progress, leave=False)
        for step in bar:
            if cursor + batch > n_train:
                order, cursor = torch.randperm(n_train, generator=g), 0
            idx = order[cursor : cursor + batch].to(dev)
            cursor += batch
            critic.train()
            loss = self._train_loss(critic, x_tr[idx], y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % self.eval_every == 0 or step == self.max_steps:
                critic.eval()
                with torch.no_grad():
                    # the same seed each time: every evaluation scores the same negatives
                    est = self._eval_nats(
                        critic, x_ev, y_ev, torch.Generator().manual_seed(eval_seed)
                    )
                bits = est / _LN2
                history.append(bits)
                steps.append(step)
                bar.set_postfix(heldout_bits=f"{bits:.3f}")
                if bits > best + self.min_delta_bits:
                    best, since_best = bits, 0
                else:
                    since_best += 1
                if (
                    self.patience is not None
                    and since_best >= self.patience
                    and len(history) >= self.eval_window
                ):
                    stopped = True
                    break
        bar.close()

        window = history[-self.eval_window :]
        for m in critic.modules():
            if isinstance(m, _Dropout):
                m.generator = None  # only needed for training; keeps the critic picklable
        self.critic_ = critic.eval()
        self.history_ = np.asarray(history, dtype=np.float64)
        self.steps_ = np.asarray(steps, dtype=np.int64)
        self.mi_ = float(np.mean(window))
        self.mi_std_ = float(np.std(window))
        self.n_samples_ = n
        self.n_train_ = n_train
        self.n_eval_ = n_eval
        self.n_steps_ = steps[-1]
        self.stopped_early_ = stopped
        self.n_features_in_ = (int(xt.shape[1]), int(yt.shape[1]))
        self._finish(n_eval)
        return self

    def score(self, x: ArrayLike2D, y: ArrayLike2D) -> float:
        """The fitted critic's bound (bits) on new pairs ``x: [n, dx]``, ``y: [n, dy]``.

        Uses the training split's z-scoring. Higher is better, so it plugs into scikit-learn
        model selection; a critic that overfit scores low on fresh pairs.
        """
        self._check_fitted("score")
        xt, yt = _check_pair(
            x, y, who=type(self).__name__, min_samples=lambda *_: 2, dtype=torch.float32
        )
        if (xt.shape[1], yt.shape[1]) != self.n_features_in_:
            raise ValueError(
                f"{type(self).__name__}.score: fitted on (dx, dy)={self.n_features_in_}, got "
                f"({xt.shape[1]}, {yt.shape[1]})."
            )
        if self.standardize:
            xt = (xt - self.x_mean_) / self.x_scale_
            yt = (yt - self.y_mean_) / self.y_scale_
        dev = torch.device(self.device)
        with torch.no_grad():
            est = self._eval_nats(
                self.critic_,
                xt.to(dev),
                yt.to(dev),
                torch.Generator().manual_seed(int(self.seed)),
            )
        return est / _LN2


class _ConcatCritic(nn.Module):
    """T(x, y) = MLP([x; y]) -> scalar."""

    def __init__(
        self, dx: int, dy: int, hidden: int, n_layers: int, dropout: float, g: torch.Generator
    ):
        super().__init__()
        self.net = _mlp(dx + dy, hidden, n_layers, 1, dropout, g)
        # T = const at the start, so the first held-out DV value is ~0, not minus the
        # variance of a random critic
        _zero_output(self.net, bias=False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.net(torch.cat([x, y], dim=-1)).squeeze(-1)


def _logmeanexp(t: Tensor) -> Tensor:
    return torch.logsumexp(t, dim=0) - math.log(t.shape[0])


class MINE(_NeuralMI):
    r"""Mutual Information Neural Estimation with the Donsker-Varadhan bound.

    .. math::
        I(X;Y) \ge \hat I_{DV} = \mathbb E_{p(x,y)}[T(x,y)]
            - \log \mathbb E_{p(x)p(y)}[e^{T(x,y)}]

    (Belghazi et al. 2018, eq. 10). ``T`` is an MLP on the concatenated pair ``[x; y]``;
    pairs ``(x_i, y_j), j != i`` stand in for samples of ``p(x)p(y)``. The gradient of the
    ``log E[e^T]`` term is biased on minibatches; with ``ema_rate`` set, its denominator is
    replaced by an exponential moving average of ``E[e^T]`` (the paper's bias correction,
    section 3.2), kept in the log domain for stability.

    Evaluation: every ``eval_every`` steps the DV bound is computed on the **held-out** split
    (a fraction ``eval_fraction`` of the pairs, never trained on), scoring each held-out
    ``x_i`` against ``eval_negatives`` fixed shifted partners ``y_{i+s}``. ``mi_`` is the mean
    over the last ``eval_window`` evaluations (never the maximum over steps, which is biased
    upward). Training stops early after ``patience`` evaluations without improvement; with
    ``patience < eval_window`` the averaged window holds the best evaluation and the
    ``patience`` after it.

    Overfitting: with a few thousand pairs the critic soon fits the training pairs, and the
    held-out bound then *falls* (below zero on independent data, since a bound on 0 can only
    lose by fitting noise). The critic therefore starts constant (bound exactly 0), uses
    dropout, a moderate learning rate and early stopping. These defaults were chosen on
    correlated Gaussians with n = 4000 (spec suggestion: lr 1e-3, 2 hidden layers): at
    d = 16 / d = 64 with 2 true bits, lr 3e-4 with one hidden layer and dropout 0.2 reached
    1.7 / 0.8 bits and held there, where lr 1e-3 or two hidden layers reached 1.6-1.7 /
    0.6-0.7 and then fell; without dropout d = 64 peaked near 0.5 and went negative.
    On independent pairs the defaults give -0.01..0.00 bits (d = 16 and 64).

    Inputs are z-scored per feature with training-split statistics (``standardize=True``);
    MI is invariant to invertible per-feature affine maps, so this only helps optimisation.

    Saturation: a DV estimate from N held-out pairs saturates near ``log2 N`` bits
    (``ceiling_bits_``), and in practice MINE underestimates well before that when the true
    MI is several bits. For a deterministic map with k distinct inputs the true MI is at most
    ``log2 k``; report it beside the estimate.

    Args:
        hidden: width of the critic's hidden layers.
        n_layers: number of hidden layers.
        dropout: dropout after each hidden layer (training only).
        lr: Adam(W) learning rate.
        weight_decay: decoupled weight decay (AdamW); 0 disables.
        batch_size: pairs per training step (clipped to the training split size).
        max_steps: maximum optimiser steps.
        eval_every: steps between held-out evaluations.
        eval_window: number of final evaluations averaged into ``mi_``.
        patience: evaluations without improvement of more than ``min_delta_bits`` before
            stopping; ``None`` trains for ``max_steps``.
        min_delta_bits: improvement (bits) that resets the patience counter.
        eval_fraction: fraction of pairs held out for evaluation.
        ema_rate: rate of the moving average of ``E[e^T]`` for the gradient correction;
            ``None`` uses the plain (biased) minibatch gradient.
        eval_negatives: shuffled partners per held-out pair in the ``p(x)p(y)`` term.
        standardize: z-score inputs before the critic.
        seed: seeds the split, the initialisation, batches and negatives (private generator).
        progress: show a tqdm bar.
        device: where the critic trains.

    Attributes:
        mi_: estimate in bits (mean of the last ``eval_window`` held-out evaluations).
        mi_std_: standard deviation over that window (optimisation noise, not a CI).
        history_: ``[n_evals]`` held-out DV estimate (bits) at each evaluation.
        steps_: ``[n_evals]`` the training step of each evaluation.
        ceiling_bits_: ``log2(n_eval_)``, where DV estimates saturate.
        n_samples_, n_train_, n_eval_: pair counts (total, training, held-out).
        n_steps_: steps trained; ``stopped_early_``: whether patience ran out.
        critic_: the trained critic ``T(x, y)``.
    """

    def __init__(
        self,
        *,
        hidden: int = 256,
        n_layers: int = 1,
        dropout: float = 0.2,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        batch_size: int = 512,
        max_steps: int = 2000,
        eval_every: int = 50,
        eval_window: int = 5,
        patience: int | None = 4,
        min_delta_bits: float = 0.01,
        eval_fraction: float = 0.2,
        ema_rate: float | None = 0.01,
        eval_negatives: int = 16,
        standardize: bool = True,
        seed: int = 0,
        progress: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        self.hidden = hidden
        self.n_layers = n_layers
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.eval_every = eval_every
        self.eval_window = eval_window
        self.patience = patience
        self.min_delta_bits = min_delta_bits
        self.eval_fraction = eval_fraction
        self.ema_rate = ema_rate
        self.eval_negatives = eval_negatives
        self.standardize = standardize
        self.seed = seed
        self.progress = progress
        self.device = device

    def _check_params(self) -> None:
        super()._check_params()
        if self.ema_rate is not None and not 0.0 < self.ema_rate <= 1.0:
            raise ValueError(f"MINE: ema_rate must be in (0, 1] or None; got {self.ema_rate}.")
        if self.eval_negatives < 1:
            raise ValueError(f"MINE: eval_negatives must be >= 1; got {self.eval_negatives}.")

    def _build_critic(self, dx: int, dy: int, g: torch.Generator) -> nn.Module:
        return _ConcatCritic(dx, dy, self.hidden, self.n_layers, self.dropout, g)

    def _reset_state(self) -> None:
        self._log_ema: Tensor | None = None

    def _train_loss(self, critic: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
        # the batch is a random draw, so rolling y by one pairs each x with another row's y
        t_joint = critic(xb, yb)
        t_marg = critic(xb, torch.roll(yb, 1, dims=0))
        lme = _logmeanexp(t_marg)
        if self.ema_rate is None:
            return -(t_joint.mean() - lme)
        cur = lme.detach()
        if self._log_ema is None:
            self._log_ema = cur
        else:
            rate = self.ema_rate
            self._log_ema = torch.logaddexp(
                self._log_ema + math.log1p(-rate) if rate < 1 else cur.new_tensor(-math.inf),
                cur + math.log(rate),
            )
        # d/dθ exp(lme - log_ema) = E[e^T dT] / ema: the MINE-corrected gradient of log E[e^T]
        return -(t_joint.mean() - torch.exp(lme - self._log_ema))

    def _eval_nats(self, critic: nn.Module, x: Tensor, y: Tensor, g: torch.Generator) -> float:
        n = x.shape[0]
        k = min(self.eval_negatives, n - 1)
        shifts = (torch.randperm(n - 1, generator=g)[:k] + 1).tolist()
        t_joint = critic(x, y).mean()
        ar = torch.arange(n, device=x.device)
        t_marg = torch.cat([critic(x, y[(ar + s) % n]) for s in shifts])
        return float(t_joint - _logmeanexp(t_marg))

    def _finish(self, n_eval: int) -> None:
        self.ceiling_bits_ = math.log2(n_eval)


class _SeparableCritic(nn.Module):
    """f(x, y) = g(x) . h(y) with MLP embeddings; scores all pairs of a batch at once."""

    def __init__(
        self,
        dx: int,
        dy: int,
        hidden: int,
        n_layers: int,
        embed: int,
        dropout: float,
        g: torch.Generator,
    ):
        super().__init__()
        self.gx = _mlp(dx, hidden, n_layers, embed, dropout, g)
        self.hy = _mlp(dy, hidden, n_layers, embed, dropout, g)
        # all scores start at 0 (bound exactly 0); zeroing one side keeps gradients alive
        _zero_output(self.gx, bias=True)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.gx(x) @ self.hy(y).T


class _BilinearCritic(nn.Module):
    """f(x, y) = x^T W y, W starting at 0 (so early stopping acts as shrinkage)."""

    def __init__(self, dx: int, dy: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dx, dy))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return x @ self.w @ y.T


class InfoNCE(_NeuralMI):
    r"""The InfoNCE contrastive lower bound.

    .. math::
        I(X;Y) \ge \hat I_{NCE} = \log K + \frac1K \sum_i \Big[f(x_i,y_i)
            - \log \sum_{j=1}^K e^{f(x_i,y_j)}\Big]

    (van den Oord et al. 2018; Poole et al. 2019, eq. 12), averaged over both directions
    (rows and columns of the score matrix; each is a valid bound). The critic is
    ``"separable"``, ``f(x, y) = g(x) . h(y)`` with MLPs ``g, h`` to ``embed`` dimensions, or
    ``"bilinear"``, ``f(x, y) = x^T W y``. Training uses minibatches of ``batch_size``;
    evaluation scores each held-out ``x_i`` against **all** ``K = n_eval_`` held-out ``y_j``.

    Saturation: the estimate can never exceed ``log K``, so it saturates at
    ``bound_bits_ = log2(n_eval_)`` bits (and training saturates at ``log2(batch_size)``).
    Expect an underestimate whenever the true MI approaches that. It has much lower variance
    than :class:`MINE`.

    Inputs are z-scored per feature with training-split statistics (``standardize=True``).
    ``mi_`` is the mean of the last ``eval_window`` held-out evaluations, never their max.
    Both critics start with all scores 0 (bound exactly 0), so early stopping also acts as
    shrinkage. Trained to convergence, the bilinear critic loses about
    ``dx*dy / (2 n_train ln 2)`` bits to fitted noise on held-out pairs (about 1 bit at
    d = 64, n = 4000), the same term that biases the Gaussian plug-in estimate. Measured at
    n = 4000 with defaults: separable 0.80-0.90 bits for 1 true bit at d = 16, 0.33-0.45 for
    2 at d = 64, -0.07..-0.03 on independent pairs; bilinear 0.79-0.83 for 1 bit at d = 16,
    0.95-1.04 for 2 at d = 64, but -0.38..-0.36 on independent pairs at d = 64.

    Args:
        critic: ``"separable"`` or ``"bilinear"``.
        embed: embedding width of the separable critic.
        lr: learning rate; ``None`` picks 1e-4 for ``"separable"`` (it overfits within a few
            hundred steps at 3e-4) and 3e-4 for ``"bilinear"``.
        Other arguments as in :class:`MINE`.

    Attributes:
        mi_, mi_std_, history_, steps_, n_samples_, n_train_, n_eval_, n_steps_,
        stopped_early_, critic_: as in :class:`MINE`.
        bound_bits_: ``log2(n_eval_)``, the largest value the held-out estimate can take.
    """

    def __init__(
        self,
        *,
        critic: Literal["separable", "bilinear"] = "separable",
        hidden: int = 256,
        n_layers: int = 1,
        embed: int = 64,
        dropout: float = 0.2,
        lr: float | None = None,
        weight_decay: float = 0.0,
        batch_size: int = 512,
        max_steps: int = 2000,
        eval_every: int = 50,
        eval_window: int = 5,
        patience: int | None = 4,
        min_delta_bits: float = 0.01,
        eval_fraction: float = 0.2,
        standardize: bool = True,
        seed: int = 0,
        progress: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        self.critic = critic
        self.hidden = hidden
        self.n_layers = n_layers
        self.embed = embed
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.eval_every = eval_every
        self.eval_window = eval_window
        self.patience = patience
        self.min_delta_bits = min_delta_bits
        self.eval_fraction = eval_fraction
        self.standardize = standardize
        self.seed = seed
        self.progress = progress
        self.device = device

    def _check_params(self) -> None:
        super()._check_params()
        if self.critic not in ("separable", "bilinear"):
            raise ValueError(
                f"InfoNCE: critic must be 'separable' or 'bilinear'; got {self.critic!r}."
            )

    def _lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-4 if self.critic == "separable" else 3e-4

    def _build_critic(self, dx: int, dy: int, g: torch.Generator) -> nn.Module:
        if self.critic == "bilinear":
            return _BilinearCritic(dx, dy)
        return _SeparableCritic(dx, dy, self.hidden, self.n_layers, self.embed, self.dropout, g)

    @staticmethod
    def _bound(scores: Tensor) -> Tensor:
        k = scores.shape[0]
        diag = scores.diagonal()
        rows = (diag - torch.logsumexp(scores, dim=1)).mean()
        cols = (diag - torch.logsumexp(scores, dim=0)).mean()
        return math.log(k) + 0.5 * (rows + cols)

    def _train_loss(self, critic: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
        return -self._bound(critic(xb, yb))

    def _eval_nats(self, critic: nn.Module, x: Tensor, y: Tensor, g: torch.Generator) -> float:
        return float(self._bound(critic(x, y)))

    def _finish(self, n_eval: int) -> None:
        self.bound_bits_ = math.log2(n_eval)


# --------------------------------------------------------------------------------------------
# Gaussian closed form
# --------------------------------------------------------------------------------------------


def _logdet_bias(d: int, dof: int) -> float:
    """E[log det S] - log det Σ for S ~ Wishart_d(dof, Σ/dof) (sample covariance), in nats."""
    i = torch.arange(1, d + 1, dtype=torch.float64)
    return float(torch.special.digamma((dof - i + 1) / 2.0).sum() + d * math.log(2.0 / dof))


class GaussianMI(_Params):
    r"""Closed-form MI of jointly Gaussian variables from sample covariances.

    .. math::
        I(X;Y) = \tfrac12\big(\log\det\Sigma_x + \log\det\Sigma_y - \log\det\Sigma\big)
               = -\tfrac12 \sum_i \log(1 - \rho_i^2)

    (converted to bits), where ``Σ`` is the joint covariance of ``[x; y]`` and ``ρ_i`` are the
    canonical correlations. Computed on correlation matrices (the per-feature variances cancel
    exactly), with constant features dropped.

    Finite samples: the plug-in estimate is biased upward by about ``dx*dy/(2n)`` nats (tens of
    bits at dx = dy = 576, n = 4000, even for independent data). With
    ``bias_correction=True`` (default) each log-determinant is corrected by its exact
    expectation under Gaussian sampling,
    ``E[log det S] - log det Σ = Σ_{i=1..d} ψ((ν-i+1)/2) + d log(2/ν)``, ``ν = n - 1``,
    which makes the MI estimate unbiased for Gaussian data (it can then come out slightly
    negative; it is not clipped). This needs ``n >= dx + dy + 2``.

    Measured at dx = dy = 576 (3 seeds): n = 2000, plug-in 173 bits on independent pairs,
    corrected -0.5..0.7 bits; n = 4000, plug-in 70 bits, corrected -0.2..0.4 bits.
    Shrinking the covariance toward the identity instead (Ledoit-Wolf style) does not remove
    this bias (n = 1000, d = 576: ~50-260 bits of spurious MI for shrinkage 0.5-0.1), so it is
    not offered: with fewer than ``dx + dy + 2`` samples, reduce the dimension first (e.g. PCA
    to k components per side with ``2k + 2 <= n``).

    ``ridge`` adds ``ridge * I`` to the correlation matrices, a numerical safeguard for
    near-collinear features; keep it tiny, since the bias correction assumes none.

    Cheap reference only: exact for Gaussians, and for other distributions the MI of the
    Gaussian with the same covariance (a lower bound on the true MI).

    Attributes:
        mi_: estimate in bits. mi_plugin_: the uncorrected plug-in estimate (bits).
        canonical_correlations_: ``[min(dx, dy)]`` sample canonical correlations (descending).
        n_samples_, n_features_in_: input sizes; n_constant_dropped_: features dropped.
    """

    def __init__(self, *, bias_correction: bool = True, ridge: float = 1e-8) -> None:
        self.bias_correction = bias_correction
        self.ridge = ridge

    @staticmethod
    def _min_samples(dx: int, dy: int) -> int:
        # the joint sample covariance has rank <= n - 1 and must be full rank (dx + dy)
        return dx + dy + 2

    def fit(self, x: ArrayLike2D, y: ArrayLike2D) -> GaussianMI:
        """Estimate I(X; Y) from ``x: [n, dx]`` and ``y: [n, dy]`` (tensors or numpy arrays)."""
        if self.ridge < 0:
            raise ValueError(f"GaussianMI: ridge must be >= 0; got {self.ridge}.")
        xt, yt = _check_pair(
            x,
            y,
            who="GaussianMI",
            min_samples=self._min_samples,
            dtype=torch.float64,
            hint=" (The joint covariance of [x; y] must be full rank.) Collect more pairs or "
            "reduce each side's dimension first, e.g. PCA to k components with 2k + 2 <= n.",
        )
        n = xt.shape[0]
        self.n_features_in_ = (int(xt.shape[1]), int(yt.shape[1]))
        keep_x, keep_y = _varying(xt), _varying(yt)
        self.n_constant_dropped_ = int((~keep_x).sum() + (~keep_y).sum())
        xt, yt = xt[:, keep_x], yt[:, keep_y]
        self.n_samples_ = n
        dx, dy = xt.shape[1], yt.shape[1]
        if dx == 0 or dy == 0:
            # a constant variable carries no information
            self.mi_ = self.mi_plugin_ = 0.0
            self.canonical_correlations_ = np.zeros(0)
            return self

        z, _, _ = _standardize(torch.cat([xt, yt], dim=1))
        r = (z.T @ z) / (n - 1)
        r = r + self.ridge * torch.eye(dx + dy, dtype=torch.float64)
        lx = torch.linalg.cholesky(r[:dx, :dx])
        ly = torch.linalg.cholesky(r[dx:, dx:])
        lj = torch.linalg.cholesky(r)

        def logdet(chol: Tensor) -> float:
            return float(2.0 * chol.diagonal().log().sum())

        ld_x, ld_y, ld_j = logdet(lx), logdet(ly), logdet(lj)
        plugin = 0.5 * (ld_x + ld_y - ld_j)
        mi = plugin
        if self.bias_correction:
            nu = n - 1
            mi -= 0.5 * (_logdet_bias(dx, nu) + _logdet_bias(dy, nu) - _logdet_bias(dx + dy, nu))
        # canonical correlations: singular values of Lx^-1 Rxy Ly^-T
        m = torch.linalg.solve_triangular(lx, r[:dx, dx:], upper=False)
        m = torch.linalg.solve_triangular(ly, m.T, upper=False).T
        self.canonical_correlations_ = torch.linalg.svdvals(m).clamp(max=1.0).numpy()
        self.mi_plugin_ = plugin / _LN2
        self.mi_ = mi / _LN2
        return self


# --------------------------------------------------------------------------------------------
# Synthetic data with known MI, and validation
# --------------------------------------------------------------------------------------------


def correlated_gaussians(
    n: int, dim: int, mi_bits: float, seed: int = 0
) -> tuple[Float[Tensor, "n dim"], Float[Tensor, "n dim"], float]:
    r"""Pairs ``(x, y)`` of standard Gaussians with a known mutual information.

    ``x ~ N(0, I_dim)`` and ``y = ρ x + sqrt(1-ρ²) ε`` with ``ε ~ N(0, I_dim)``, the same ``ρ`` in
    every dimension, chosen so that

    .. math:: I(X;Y) = -\tfrac12 \sum_{i=1}^{dim} \log_2(1-\rho^2) = \text{mi\_bits},
       \quad \rho^2 = 1 - 2^{-2\,\text{mi\_bits}/dim}.

    ``mi_bits = 0`` gives independent pairs.

    Returns:
        ``x: [n, dim]``, ``y: [n, dim]`` (float32) and the true MI in bits.
    """
    if n < 1 or dim < 1:
        raise ValueError(f"correlated_gaussians: n and dim must be >= 1; got n={n}, dim={dim}.")
    if not (mi_bits >= 0.0 and math.isfinite(mi_bits)):
        raise ValueError(f"correlated_gaussians: mi_bits must be finite and >= 0; got {mi_bits}.")
    rho = math.sqrt(-math.expm1(-2.0 * mi_bits * _LN2 / dim))
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    eps = torch.randn(n, dim, generator=g, dtype=torch.float64)
    # sqrt(1 - rho^2) = 2^(-mi/dim), computed directly so large MI keeps its precision
    y = rho * x + 2.0 ** (-mi_bits / dim) * eps
    return x.float(), y.float(), float(mi_bits)


@dataclass(frozen=True)
class ValidationRow:
    """One cell of :func:`validate_estimator`: an estimate against the truth (bits)."""

    estimator: str
    dim: int
    n: int
    true_bits: float
    estimate_bits: float
    error_bits: float
    seconds: float  # wall clock
    cpu_seconds: float  # CPU time of this process (all threads); fairer on a shared machine


def validate_estimator(
    estimator_factory: Callable[[], MIEstimator],
    dims: Sequence[int],
    mi_values: Sequence[float],
    n: int = 4000,
    seed: int = 0,
    name: str | None = None,
) -> list[ValidationRow]:
    """Fit a fresh estimator on :func:`correlated_gaussians` for every ``(dim, mi)`` cell.

    Args:
        estimator_factory: zero-argument callable returning an unfitted estimator (a class
            or a ``lambda: MINE(max_steps=500)``).
        dims: dimensions of x and y.
        mi_values: true MI values in bits (0 gives independent pairs).
        n: pairs per cell.
        seed: base seed; each cell's data seed is derived from it, its dim and its MI index.
        name: label for the rows (default: the estimator's class name).

    Returns:
        One :class:`ValidationRow` per cell, ``error_bits = estimate - true``.
    """
    rows: list[ValidationRow] = []
    for dim in dims:
        for j, mi in enumerate(mi_values):
            x, y, true_bits = correlated_gaussians(
                n, dim, mi, seed=seed * 1_000_003 + dim * 1_009 + j
            )
            est = estimator_factory()
            t0, c0 = time.perf_counter(), time.process_time()
            est.fit(x, y)
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows.append(
                ValidationRow(
                    estimator=name or type(est).__name__,
                    dim=dim,
                    n=n,
                    true_bits=true_bits,
                    estimate_bits=float(est.mi_),
                    error_bits=float(est.mi_) - true_bits,
                    seconds=secs,
                    cpu_seconds=cpu,
                )
            )
    return rows


def validation_table_markdown(rows: Sequence[ValidationRow]) -> str:
    """A markdown table of validation rows (estimator, dim, n, true, estimate, error, times)."""
    lines = [
        "| estimator | dim | n | true (bits) | estimate (bits) | error (bits) "
        "| CPU time (s) | wall time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.estimator} | {r.dim} | {r.n} | {r.true_bits:.2f} | {r.estimate_bits:.2f} "
            f"| {r.error_bits:+.2f} | {r.cpu_seconds:.1f} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)
