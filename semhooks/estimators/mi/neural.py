"""The training loop shared by the neural MI estimators (:class:`MINE`, :class:`InfoNCE`).

A seeded train / held-out split, z-scoring with training-split statistics, AdamW, held-out
evaluation every ``eval_every`` steps, early stopping, and ``mi_`` as the mean of the last
``eval_window`` held-out evaluations (never their maximum). Critic building blocks draw every
random number from a private :class:`torch.Generator`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from semhooks.estimators.mi.base import (
    LN2,
    MIN_EVAL,
    MIN_TRAIN,
    ArrayLike2D,
    MIBase,
    check_pair,
    standardize,
)

__all__ = ["NeuralMIBase", "critic_mlp", "zero_last_layer"]


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


def critic_mlp(
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


def zero_last_layer(net: nn.Sequential, *, bias: bool) -> None:
    last = net[-1]
    assert isinstance(last, nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        if bias:
            last.bias.zero_()


class NeuralMIBase(MIBase):
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
        n_eval = max(MIN_EVAL, int(round(n * self.eval_fraction)))
        return n - n_eval, n_eval

    def _split(
        self, xt: Tensor, yt: Tensor, tr: Tensor, ev: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_tr, y_tr, x_ev, y_ev)``: rows ``tr`` and ``ev`` of ``xt`` ``[n, dx]`` and
        ``yt`` ``[n, dy]``, z-scored with the training rows' statistics when
        ``standardize`` (which sets ``x_mean_``, ``x_scale_``, ``y_mean_``, ``y_scale_``)."""
        x_tr, y_tr, x_ev, y_ev = xt[tr], yt[tr], xt[ev], yt[ev]
        if self.standardize:
            # MI is invariant to invertible per-feature affine maps, so z-scoring (with
            # training-split statistics) changes nothing but the critic's conditioning.
            x_ev, self.x_mean_, self.x_scale_ = standardize(x_ev, x_tr)
            y_ev, self.y_mean_, self.y_scale_ = standardize(y_ev, y_tr)
            x_tr = (x_tr - self.x_mean_) / self.x_scale_
            y_tr = (y_tr - self.y_mean_) / self.y_scale_
        return x_tr, y_tr, x_ev, y_ev

    def _set_fitted(
        self,
        critic: nn.Module,
        history: list[float],
        steps: list[int],
        stopped: bool,
        n_train: int,
        n_eval: int,
        dx: int,
        dy: int,
    ) -> None:
        """Set the fitted attributes from a finished training run: ``critic_`` (in eval
        mode), ``history_``/``steps_`` (the held-out bits at each evaluation), ``mi_`` and
        ``mi_std_`` (mean and std of the last ``eval_window`` evaluations), the sizes."""
        window = history[-self.eval_window :]
        self.critic_ = critic.eval()
        self.history_ = np.asarray(history, dtype=np.float64)
        self.steps_ = np.asarray(steps, dtype=np.int64)
        self.mi_ = float(np.mean(window))
        self.mi_std_ = float(np.std(window))
        self.n_samples_ = n_train + n_eval
        self.n_train_ = n_train
        self.n_eval_ = n_eval
        self.n_steps_ = steps[-1]
        self.stopped_early_ = stopped
        self.n_features_in_ = (int(dx), int(dy))
        self._finish(n_eval)

    def _min_samples(self, dx: int, dy: int) -> int:
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(
                f"{type(self).__name__}: eval_fraction must be in (0, 1); got {self.eval_fraction}."
            )
        # smallest n whose split leaves MIN_TRAIN training and MIN_EVAL held-out pairs
        n = MIN_TRAIN + MIN_EVAL
        while self._split_sizes(n)[0] < MIN_TRAIN:
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

    def fit(self, x: ArrayLike2D, y: ArrayLike2D) -> NeuralMIBase:
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
        xt, yt = check_pair(x, y, who=who, min_samples=self._min_samples, dtype=torch.float32)
        n = xt.shape[0]
        n_train, n_eval = self._split_sizes(n)
        g = torch.Generator().manual_seed(int(self.seed))
        perm = torch.randperm(n, generator=g)
        x_tr, y_tr, x_ev, y_ev = self._split(xt, yt, perm[:n_train], perm[n_train:])
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
                bits = est / LN2
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

        for m in critic.modules():
            if isinstance(m, _Dropout):
                m.generator = None  # only needed for training; keeps the critic picklable
        self._set_fitted(critic, history, steps, stopped, n_train, n_eval, xt.shape[1], yt.shape[1])
        return self

    def score(self, x: ArrayLike2D, y: ArrayLike2D) -> float:
        """The fitted critic's bound (bits) on new pairs ``x: [n, dx]``, ``y: [n, dy]``.

        Uses the training split's z-scoring. Higher is better, so it plugs into scikit-learn
        model selection; a critic that overfit scores low on fresh pairs.
        """
        self._check_fitted("score")
        xt, yt = check_pair(
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
        return est / LN2
