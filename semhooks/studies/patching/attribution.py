"""Attribution patching: a first-order estimate of the whole grid from one forward and one
backward pass (Nanda 2023; Syed et al. 2023), with AtP*'s two corrections (Kramar et al.
2024): the query/key correction and GradDrop.

For a cell ``n`` (a site, layer, position[, head]) with receiver activation ``a_r`` and
source activation ``a_s`` (denoising: receiver = corrupted run, source = clean run),

    m(patched) ~ m(receiver) + (a_s - a_r) . dm/da_r

summed over the cell's aligned tokens; the estimate is normalised exactly as exact patching
is (0 = corrupted, 1 = clean). It is exact when the metric is linear in the patched
activation, and it errs where the network is not (a saturated attention softmax, a norm).

Query/key correction (``qk_correction=True``, the default; AtP* section 3.1.1): a ``"q"`` or
``"k"`` cell acts only through its layer's attention pattern, and a saturated softmax makes
the line above badly wrong there. The pattern under the patch is recomputed exactly (the
patched scores of that head, a softmax) and only the step after it is linearised,

    m(patched) ~ m(receiver) + sum (A_patched - A) * dm/dA

(:mod:`semhooks.studies.patching.qk`); exact when the metric is linear in the pattern.
``qk_correction=False`` keeps the plain estimate, to compare.

GradDrop (``gradrop=True``, AtP* section 3.1.2): an estimate can vanish because two paths
from the cell cancel. AtP* repeats the backward pass once per layer ``l`` with the gradient
through block ``l``'s sublayer outputs (``attn_out``, ``mlp_out``) stopped, and scores a cell
by ``mean_l |AtP_l(n)|`` (normalised by the clean-corrupted gap): an unsigned magnitude for
ranking, which surfaces cells whose paths cancel. It costs one more forward and backward
per layer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.studies.patching.engine import (
    LabelIndex,
    Metric,
    Mode,
    PatchingSetup,
    attention_hook,
    evaluate,
    hook_name,
    label_index,
    prepare,
    resolve_grid,
)
from semhooks.studies.patching.qk import corrected_effects
from semhooks.studies.patching.result import PatchingResult, normalised

Key = tuple[str, int]
QK_SITES = ("q", "k")


def _receiver_deltas(
    setup: PatchingSetup,
    keys: Sequence[Key],
    index: LabelIndex,
    *,
    qk_correction: bool,
    stop_layer: int | None = None,
) -> tuple[Tensor, dict[Key, Tensor]]:
    """The receiver's metric ``[pair]`` and each key's estimated metric change
    ``[pair, label(, head)]``, from one forward and one backward pass on the receiver run.

    ``stop_layer``: stop the gradient through that block's attn_out and mlp_out (GradDrop).
    """
    adapter = setup.adapter
    corrected = [k for k in keys if qk_correction and k[0] in QK_SITES]
    plain = [k for k in keys if k not in corrected]
    layers = sorted({layer for _, layer in corrected})
    names = {k: hook_name(adapter, *k) for k in keys}
    scores = {layer: attention_hook(adapter, "attn_scores", layer) for layer in layers}
    patterns = {layer: attention_hook(adapter, "pattern", layer) for layer in layers}
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
    grabbed = {*names.values(), *scores.values(), *patterns.values()}
    hooks += [(n, grab(n)) for n in sorted(grabbed)]
    # gradients only where an estimate reads them: plain cells, and the patterns of the
    # layers whose query/key cells are corrected
    wanted = sorted({names[k] for k in plain} | set(patterns.values()))
    pairs = torch.arange(setup.n_pairs)
    out: dict[Key, Tensor] = {}
    with torch.enable_grad():
        value, _ = evaluate(setup, setup.receiver, pairs, hooks, grad=True)
        grads = torch.autograd.grad(
            value.sum(), [acts[n] for n in wanted], allow_unused=True, retain_graph=bool(layers)
        )
        by_name = {
            n: (g if g is not None else torch.zeros_like(acts[n])).detach()
            for n, g in zip(wanted, grads, strict=True)
        }
        for key in corrected:
            layer = key[1]
            out[key] = corrected_effects(
                acts[names[key]], acts[scores[layer]], acts[patterns[layer]],
                by_name[patterns[layer]], setup.sources[key], index,
                where=f"layer {layer}",
            )  # fmt: skip
    for key in plain:
        out[key] = _first_order(
            setup.sources[key], acts[names[key]].detach(), by_name[names[key]], index, setup.n_pairs
        )
    return value.detach().float().cpu(), out


def _first_order(
    source: Tensor, receiver: Tensor, grad: Tensor, index: LabelIndex, n_pairs: int
) -> Tensor:
    """``sum over each label's tokens of (a_s - a_r) . dm/da_r``: ``[pair, label(, head)]``."""
    src = source.to(receiver.device)[index.pair, index.source].float()
    at = (index.pair, index.receiver)
    terms = ((src - receiver[at].float()) * grad[at].float()).sum(-1)  # [token(, head)]
    out = torch.zeros((index.n_labels * n_pairs, *terms.shape[1:]), device=terms.device)
    out.index_add_(0, index.label.to(terms.device) * n_pairs + index.pair.to(terms.device), terms)
    return out.view(index.n_labels, n_pairs, *terms.shape[1:]).transpose(0, 1).cpu()


def _estimates(
    sites: Sequence[str], layers: Sequence[int], deltas: dict[Key, Tensor]
) -> dict[str, Tensor]:
    """Per site: estimated metric change ``[pair, layer, position(, head)]``."""
    return {s: torch.stack([deltas[(s, layer)] for layer in layers], dim=1) for s in sites}


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
    qk_correction: bool = True,
    gradrop: bool = False,
    progress: bool = True,
) -> PatchingResult:
    """First-order (attribution) patching of the same grid as
    :func:`~semhooks.studies.patching.activation_patching` (same arguments), from one
    forward and one backward pass over the pairs (plus the source baseline forward).

    ``qk_correction`` (default): ``"q"`` and ``"k"`` cells recompute their head's attention
    pattern exactly and linearise only after the softmax (AtP*; see the module docstring);
    ``False``: the plain first-order estimate for them too. Recorded in
    ``provenance["qk_correction"]``.

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
    index = label_index(setup, labels)
    # the receiver's forward and backward is also its baseline
    m_recv, first = _receiver_deltas(setup, keys, index, qk_correction=qk_correction)
    if mode == "denoise":
        setup.corrupted_metric = m_recv
    else:
        setup.clean_metric = m_recv
    delta = _estimates(sites, layer_list, first)
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
            _, dropped = _receiver_deltas(
                setup, keys, index, qk_correction=qk_correction, stop_layer=layer
            )
            for s, d in _estimates(sites, layer_list, dropped).items():
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
        provenance=adapter.provenance(
            n_pairs=setup.n_pairs, clean=setup.clean.texts[:3], qk_correction=qk_correction
        ),
    )
    result.seconds = time.perf_counter() - t0
    result.n_forwards = setup.n_forwards
    return result
