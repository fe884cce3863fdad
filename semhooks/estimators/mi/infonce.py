"""InfoNCE: the contrastive lower bound (van den Oord et al. 2018; Poole et al. 2019)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from semhooks.estimators.mi.neural import NeuralMIBase, critic_mlp, zero_last_layer

__all__ = ["InfoNCE"]


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
        self.gx = critic_mlp(dx, hidden, n_layers, embed, dropout, g)
        self.hy = critic_mlp(dy, hidden, n_layers, embed, dropout, g)
        # all scores start at 0 (bound exactly 0); zeroing one side keeps gradients alive
        zero_last_layer(self.gx, bias=True)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.gx(x) @ self.hy(y).T


class _BilinearCritic(nn.Module):
    """f(x, y) = x^T W y, W starting at 0 (so early stopping acts as shrinkage)."""

    def __init__(self, dx: int, dy: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dx, dy))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return x @ self.w @ y.T


class InfoNCE(NeuralMIBase):
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
