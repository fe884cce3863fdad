"""Many :class:`MINE` fits trained side by side as one stacked model.

An emergence study fits one MINE per (block, position): dozens of fits of a few hundred
steps each on a few hundred pairs, where each optimiser step costs far more in per-call
overhead than in arithmetic. :func:`fit_stacked` trains ``K`` critics at once, their weights
stacked along a leading axis (``[K, d_in, d_out]``, batched matrix products), so one step
costs one call per operation instead of ``K``.

It reproduces ``[clone(est).fit(x, y) for x, y in pairs]`` step for step: with one seed,
every per-pair fit draws the same split, initial weights, batch order, dropout masks and
held-out negatives (they depend only on ``n`` and the dimensions, which the stacked pairs
share), so the stacked fit draws them once and applies them to every critic. The optimiser
is AdamW written out (the formula of ``torch.optim.AdamW``'s single-tensor path), and each
critic keeps its own early stopping: a critic whose patience runs out leaves the stack with
its weights and history, exactly where its own fit would have stopped. What differs is the
order of floating-point additions inside the batched products (results agree to rounding;
``tests/test_mi.py`` compares both paths).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from jaxtyping import Float
from sklearn.base import clone
from torch import Tensor, nn
from tqdm.auto import tqdm

from semhooks.estimators.mi.base import LN2, ArrayLike2D, check_pair
from semhooks.estimators.mi.mine import MINE

__all__ = ["can_stack", "fit_stacked"]

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # torch.optim.AdamW's defaults, as MINE uses them


def can_stack(estimator: object) -> bool:
    """Whether :func:`fit_stacked` reproduces ``estimator.fit``: a plain :class:`MINE`
    (a subclass may change the critic or the loss)."""
    return type(estimator) is MINE


def _forward(
    params: list[tuple[Tensor, Tensor]],
    x: Float[Tensor, "k b dx"],
    y: Float[Tensor, "k b dy"],
    masks: list[Tensor] | None,
    keep_scale: float,
) -> Float[Tensor, "k b"]:
    """The stacked concat critic ``T(x, y) = MLP([x; y])``; ``masks``: one shared dropout
    mask ``[b, hidden]`` per hidden layer (training), or None (evaluation)."""
    h = torch.cat([x, y], dim=-1)
    last = len(params) - 1
    for i, (w, b) in enumerate(params):
        h = torch.baddbmm(b.unsqueeze(1), h, w)
        if i < last:
            h = torch.relu(h)
            if masks is not None:
                h = h * masks[i] / keep_scale
    return h.squeeze(-1)


def fit_stacked(estimator: MINE, pairs: Sequence[tuple[ArrayLike2D, ArrayLike2D]]) -> list[MINE]:
    """Fit one copy of ``estimator`` per pair ``(x [n, dx], y [n, dy])``, all at once.

    Every pair must have the same ``n``, ``dx`` and ``dy``. Returns fitted estimators with
    the attributes :meth:`MINE.fit` sets (``mi_``, ``history_``, ``critic_``, ...), equal to
    separate fits up to floating-point rounding.

    Raises:
        TypeError: ``estimator`` is not a plain :class:`MINE` (see :func:`can_stack`).
        ValueError: as :meth:`MINE.fit` for a bad pair; pairs of different shapes.
    """
    if not can_stack(estimator):
        raise TypeError(f"fit_stacked needs a MINE, got {type(estimator).__name__}")
    est = estimator
    est._check_params()
    if not pairs:
        return []
    checked = [
        check_pair(x, y, who="MINE", min_samples=est._min_samples, dtype=torch.float32)
        for x, y in pairs
    ]
    shapes = sorted({(tuple(x.shape), tuple(y.shape)) for x, y in checked})
    if len(shapes) > 1:
        raise ValueError(f"fit_stacked: every pair must have the same shapes; got {shapes}")
    k = len(checked)
    n, dx, dy = checked[0][0].shape[0], checked[0][0].shape[1], checked[0][1].shape[1]
    n_train, n_eval = est._split_sizes(n)
    g = torch.Generator().manual_seed(int(est.seed))
    perm = torch.randperm(n, generator=g)
    tr, ev = perm[:n_train], perm[n_train:]
    fitted = [clone(est) for _ in range(k)]
    parts: list[list[Tensor]] = [[], [], [], []]
    for f, (xt, yt) in zip(fitted, checked, strict=True):
        # MINE.fit's own split and z-scoring (each copy keeps its statistics)
        for part, t in zip(parts, f._split(xt, yt, tr, ev), strict=True):
            part.append(t)
    dev = torch.device(est.device)
    x_tr, y_tr, x_ev, y_ev = (torch.stack(p).to(dev) for p in parts)

    # the same draws from g as a single fit: initial critic, dropout seed, eval seed, orders
    template = est._build_critic(dx, dy, g)
    linears = [m for m in template.modules() if isinstance(m, nn.Linear)]
    params = [
        (
            lin.weight.detach().T.to(dev).expand(k, -1, -1).clone().requires_grad_(True),
            lin.bias.detach().to(dev).expand(k, -1).clone().requires_grad_(True),
        )
        for lin in linears
    ]
    flat = [p for pair in params for p in pair]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in flat]
    dropout_gen = torch.Generator(device=dev).manual_seed(
        int(torch.randint(0, 2**62, (1,), generator=g))
    )
    batch = min(est.batch_size, n_train)
    eval_seed = int(torch.randint(0, 2**62, (1,), generator=g))
    p_drop, keep_scale = est.dropout, 1.0 - est.dropout
    n_hidden = len(linears) - 1
    lr = est._lr()
    decay = 1 - lr * est.weight_decay  # AdamW's decoupled weight decay, per step

    def masks(h_shape: tuple[int, int]) -> list[Tensor] | None:
        if p_drop <= 0:
            return None
        return [
            torch.empty(h_shape, device=dev).bernoulli_(1.0 - p_drop, generator=dropout_gen)
            for _ in range(n_hidden)
        ]

    active = list(range(k))  # fitted index of each row of the stack
    histories: list[list[float]] = [[] for _ in range(k)]
    steps_at: list[list[int]] = [[] for _ in range(k)]
    best = [-math.inf] * k
    since_best = [0] * k
    stopped = [False] * k
    finals: dict[int, list[Tensor]] = {}
    log_ema: Tensor | None = None
    order = torch.randperm(n_train, generator=g)
    cursor = 0
    bar = tqdm(
        range(1, est.max_steps + 1), desc=f"MINE x{k}", disable=not est.progress, leave=False
    )
    for step in bar:
        if cursor + batch > n_train:
            order, cursor = torch.randperm(n_train, generator=g), 0
        idx = order[cursor : cursor + batch].to(dev)
        cursor += batch
        xb, yb = x_tr[:, idx], y_tr[:, idx]
        # one mask per hidden layer and critic call, drawn in the order a single fit draws
        t_joint = _forward(params, xb, yb, masks((batch, est.hidden)), keep_scale)
        t_marg = _forward(
            params, xb, torch.roll(yb, 1, dims=1), masks((batch, est.hidden)), keep_scale
        )
        lme = torch.logsumexp(t_marg, dim=1) - math.log(t_marg.shape[1])
        if est.ema_rate is None:
            loss = -(t_joint.mean(1) - lme)
        else:
            cur = lme.detach()
            if log_ema is None:
                log_ema = cur
            else:
                rate = est.ema_rate
                log_ema = torch.logaddexp(
                    log_ema + math.log1p(-rate) if rate < 1 else torch.full_like(cur, -math.inf),
                    cur + math.log(rate),
                )
            loss = -(t_joint.mean(1) - torch.exp(lme - log_ema))
        for p in flat:
            p.grad = None
        loss.sum().backward()  # the critics share no weight: each gets its own gradient
        with torch.no_grad():
            bc1, bc2 = 1 - _BETA1**step, 1 - _BETA2**step
            step_size, bc2_sqrt = lr / bc1, bc2**0.5
            for p, (m1, m2) in zip(flat, moments, strict=True):
                grad = p.grad
                assert grad is not None
                if est.weight_decay != 0:
                    p.mul_(decay)
                m1.lerp_(grad, 1 - _BETA1)
                m2.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
                denom = (m2.sqrt() / bc2_sqrt).add_(_EPS)
                p.addcdiv_(m1, denom, value=-step_size)

        if not (step % est.eval_every == 0 or step == est.max_steps):
            continue
        with torch.no_grad():
            bits = _eval_bits(est, params, x_ev, y_ev, eval_seed)
        leaving = []
        for row, i in enumerate(active):
            histories[i].append(bits[row])
            steps_at[i].append(step)
            if bits[row] > best[i] + est.min_delta_bits:
                best[i], since_best[i] = bits[row], 0
            else:
                since_best[i] += 1
            if (
                est.patience is not None
                and since_best[i] >= est.patience
                and len(histories[i]) >= est.eval_window
            ):
                stopped[i] = True
                leaving.append(row)
        if step == est.max_steps:
            leaving = list(range(len(active)))
        if not leaving:
            continue
        for row in leaving:
            finals[active[row]] = [p.detach()[row].clone() for p in flat]
        left = set(leaving)
        stay = [row for row in range(len(active)) if row not in left]
        if not stay:
            break
        keep = torch.tensor(stay, device=dev)
        with torch.no_grad():
            params = [
                (w.detach()[keep].requires_grad_(True), b.detach()[keep].requires_grad_(True))
                for w, b in params
            ]
            flat = [p for pair in params for p in pair]
            moments = [(m1[keep], m2[keep]) for m1, m2 in moments]
            x_tr, y_tr, x_ev, y_ev = x_tr[keep], y_tr[keep], x_ev[keep], y_ev[keep]
            if log_ema is not None:
                log_ema = log_ema[keep]
        active = [active[row] for row in stay]
    bar.close()

    for i, f in enumerate(fitted):
        critic = copy.deepcopy(template)
        mine_linears = [m for m in critic.modules() if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for j, lin in enumerate(mine_linears):
                lin.weight.copy_(finals[i][2 * j].T)
                lin.bias.copy_(finals[i][2 * j + 1])
        f._set_fitted(
            critic.to(dev), histories[i], steps_at[i], stopped[i], n_train, n_eval, dx, dy
        )
    return fitted


def _eval_bits(
    est: MINE,
    params: list[tuple[Tensor, Tensor]],
    x: Float[Tensor, "k n dx"],
    y: Float[Tensor, "k n dy"],
    eval_seed: int,
) -> list[float]:
    """Held-out DV bound of each stacked critic, in bits (``MINE._eval_nats`` per row)."""
    n = x.shape[1]
    g = torch.Generator().manual_seed(eval_seed)
    n_neg = min(est.eval_negatives, n - 1)
    shifts = (torch.randperm(n - 1, generator=g)[:n_neg] + 1).tolist()
    t_joint = _forward(params, x, y, None, 1.0).mean(1)
    ar = torch.arange(n, device=x.device)
    t_marg = torch.cat([_forward(params, x, y[:, (ar + s) % n], None, 1.0) for s in shifts], 1)
    lme = torch.logsumexp(t_marg, dim=1) - math.log(t_marg.shape[1])
    return [float(v) / LN2 for v in (t_joint - lme).tolist()]
