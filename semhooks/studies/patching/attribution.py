"""Attribution patching: a first-order estimate of the whole grid from one forward and one
backward pass (Nanda 2023; Syed et al. 2023), with AtP*'s GradDrop (Kramar et al. 2024).

For a cell ``n`` (a site, layer, position[, head]) with receiver activation ``a_r`` and
source activation ``a_s`` (denoising: receiver = corrupted run, source = clean run),

    m(patched) ~ m(receiver) + (a_s - a_r) . dm/da_r

summed over the cell's aligned tokens; the estimate is normalised exactly as exact patching
is (0 = corrupted, 1 = clean). It is exact when the metric is linear in the patched
activation, and it errs where the network is not (a saturated attention softmax, a norm).

GradDrop (``gradrop=True``, AtP* section 3.1.2): an estimate can vanish because two paths
from the cell cancel. AtP* repeats the backward pass once per layer ``l`` with the gradient
through block ``l``'s sublayer outputs (``attn_out``, ``mlp_out``) stopped, and scores a cell
by ``mean_l |AtP_l(n)|`` (normalised by the clean-corrupted gap): an unsigned magnitude for
ranking, which surfaces cells whose paths cancel. It costs one more forward and backward
per layer.

AtP*'s other correction (recomputing the attention softmax when a patch moves a query or a
key) is not implemented: these grids patch residual, sublayer and per-head *outputs*.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.studies.patching.engine import (
    Metric,
    Mode,
    PatchingSetup,
    hook_name,
    prepare,
    resolve_grid,
    run_metric,
)
from semhooks.studies.patching.result import PatchingResult, normalised


def _receiver_grads(
    setup: PatchingSetup, keys: Sequence[tuple[str, int]], stop_layer: int | None = None
) -> tuple[Tensor, dict[tuple[str, int], Tensor], dict[tuple[str, int], Tensor]]:
    """Metric, activations and their gradients on the receiver run (one forward+backward);
    ``stop_layer``: stop the gradient through that block's attn_out and mlp_out."""
    adapter = setup.adapter
    names = {k: hook_name(adapter, *k) for k in keys}
    acts: dict[str, Tensor] = {}

    def grab(name: str) -> Any:
        def hook(act: Tensor, hook: Any = None) -> Tensor:
            # a fresh node: some hook points (the bridge's attn.hook_z) hand the hook a
            # reshaped view whose own gradient is never formed unless the hook returns it
            acts[name] = act.clone()
            return acts[name]

        return hook

    hooks: list[tuple[str, Any]] = []
    if stop_layer is not None:
        for site in ("attn_out", "mlp_out"):

            def detach(act: Tensor, hook: Any = None) -> Tensor:
                # a new leaf: its own gradient is still formed, nothing flows past it
                return act.detach().requires_grad_(True)

            hooks.append((adapter.hook_name(site, stop_layer), detach))
    hooks += [(n, grab(n)) for n in sorted(set(names.values()))]
    pairs = torch.arange(setup.n_pairs)
    with torch.enable_grad():
        value = run_metric(setup, setup.receiver, pairs, hooks, grad=True)
        order = sorted(acts)
        grads = torch.autograd.grad(value.sum(), [acts[n] for n in order], allow_unused=True)
    by_name = {
        n: (g if g is not None else torch.zeros_like(acts[n])).detach().float().cpu()
        for n, g in zip(order, grads, strict=True)
    }
    a = {k: acts[n].detach().float().cpu() for k, n in names.items()}
    g = {k: by_name[n] for k, n in names.items()}
    return value.detach().float().cpu(), a, g


def _estimates(
    setup: PatchingSetup,
    sites: Sequence[str],
    layers: Sequence[int],
    labels: Sequence[str],
    acts: dict[tuple[str, int], Tensor],
    grads: dict[tuple[str, int], Tensor],
) -> dict[str, Tensor]:
    """Per site: estimated metric change ``[pair, layer, position(, head)]``."""
    out = {}
    n = setup.n_pairs
    for s in sites:
        per_layer = []
        for layer in layers:
            src, recv, g = (
                setup.sources[(s, layer)].float().cpu(),
                acts[(s, layer)],
                grads[(s, layer)],
            )
            cols = []
            for lab in labels:
                rows = []
                for p in range(n):
                    tr, ts = setup.tokens(lab, p)
                    diff = src[p, ts] - recv[p, tr]  # [k, d] or [k, h, d_head]
                    rows.append((diff * g[p, tr]).sum(0).sum(-1))  # [] or [h]
                cols.append(torch.stack(rows))
            per_layer.append(torch.stack(cols, dim=1))  # [pair, pos(, h)]
        out[s] = torch.stack(per_layer, dim=1)  # [pair, layer, pos(, h)]
    return out


def attribution_patching(
    model: Any,
    clean: Sequence[str],
    corrupted: Sequence[str],
    metric: Metric,
    *,
    sites: Sequence[str] | str = ("resid_pre", "attn_out", "mlp_out"),
    layers: Any = "all",
    positions: Sequence[str] | str | None = None,
    mode: Mode = "denoise",
    spans: Sequence[tuple[str, str]] | None = None,
    gradrop: bool = False,
    progress: bool = True,
) -> PatchingResult:
    """First-order (attribution) patching of the same grid as
    :func:`~semhooks.studies.patching.activation_patching` (same arguments), from one
    forward and one backward pass over the pairs (plus the source baseline forward).

    ``gradrop=True`` returns AtP*'s GradDrop magnitudes instead (``method=
    "attribution+gradrop"``, unsigned; compare with ``result.compare(exact, absolute=True)``),
    at one extra forward and backward per model layer.

    ``raw[site]`` holds each pair's estimated patched metric, ``[pair, layer, position(, head)]``.
    """
    t0 = time.perf_counter()
    from semhooks.backend.adapter import adapt

    adapter = adapt(model)
    sites, layer_list = resolve_grid(adapter, sites, layers)
    keys = [(s, layer) for s in sites for layer in layer_list]
    setup = prepare(
        model, clean, corrupted, metric, mode=mode, spans=spans, hooks=keys, run_receiver=False
    )
    labels = setup.labels(positions)
    m_recv, acts, grads = _receiver_grads(setup, keys)  # also the receiver's baseline
    if mode == "denoise":
        setup.corrupted_metric = m_recv
    else:
        setup.clean_metric = m_recv
    delta = _estimates(setup, sites, layer_list, labels, acts, grads)
    gap = float(setup.clean_metric.mean() - setup.corrupted_metric.mean())
    if not gradrop:
        raw = {s: d + m_recv.view(-1, *([1] * (d.ndim - 1))) for s, d in delta.items()}
        scores = {
            s: normalised(r, setup.clean_metric, setup.corrupted_metric) for s, r in raw.items()
        }
        method = "attribution"
    else:
        total = {s: torch.zeros_like(d) for s, d in delta.items()}
        drops = range(adapter.n_layers)
        for layer in tqdm(drops, desc="GradDrop", unit="layer", disable=not progress):
            _, a_l, g_l = _receiver_grads(setup, keys, stop_layer=layer)
            for s, d in _estimates(setup, sites, layer_list, labels, a_l, g_l).items():
                total[s] += d.abs()
        raw = {s: t / max(1, adapter.n_layers - 1) for s, t in total.items()}
        scores = {s: r.mean(0) / abs(gap) for s, r in raw.items()}
        method = "attribution+gradrop"
    result = PatchingResult(
        scores=scores,
        raw=raw,
        layers=layer_list,
        positions=labels,
        position_labels=setup.display(labels),
        clean_metric=setup.clean_metric,
        corrupted_metric=setup.corrupted_metric,
        method=method,
        mode=mode,
        provenance=adapter.provenance(n_pairs=setup.n_pairs, clean=setup.clean.texts[:3]),
    )
    result.seconds = time.perf_counter() - t0
    result.n_forwards = setup.n_forwards
    return result
