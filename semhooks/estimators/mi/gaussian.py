"""The closed-form mutual information of jointly Gaussian variables, bias-corrected."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from semhooks.estimators.mi.base import LN2, ArrayLike2D, MIBase, check_pair, standardize, varying

__all__ = ["GaussianMI"]

# --------------------------------------------------------------------------------------------
# Gaussian closed form
# --------------------------------------------------------------------------------------------


def _logdet_bias(d: int, dof: int) -> float:
    """E[log det S] - log det Σ for S ~ Wishart_d(dof, Σ/dof) (sample covariance), in nats."""
    i = torch.arange(1, d + 1, dtype=torch.float64)
    return float(torch.special.digamma((dof - i + 1) / 2.0).sum() + d * math.log(2.0 / dof))


class GaussianMI(MIBase):
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
        xt, yt = check_pair(
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
        keep_x, keep_y = varying(xt), varying(yt)
        self.n_constant_dropped_ = int((~keep_x).sum() + (~keep_y).sum())
        xt, yt = xt[:, keep_x], yt[:, keep_y]
        self.n_samples_ = n
        dx, dy = xt.shape[1], yt.shape[1]
        if dx == 0 or dy == 0:
            # a constant variable carries no information
            self.mi_ = self.mi_plugin_ = 0.0
            self.canonical_correlations_ = np.zeros(0)
            return self

        z, _, _ = standardize(torch.cat([xt, yt], dim=1))
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
        self.mi_plugin_ = plugin / LN2
        self.mi_ = mi / LN2
        return self


# --------------------------------------------------------------------------------------------
# Synthetic data with known MI, and validation
# --------------------------------------------------------------------------------------------
