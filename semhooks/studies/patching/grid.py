"""Exact activation patching over a grid of sites x layers x positions (x heads).

Denoising (``mode="denoise"``, the default) runs the corrupted texts and writes the clean
run's activation into one cell; noising (``mode="noise"``) runs the clean texts and writes
the corrupted activation. Either way the score of a cell is the metric recovered,

    score = (mean_pairs m_patched - mean_pairs m_corrupted) / (mean m_clean - mean m_corrupted)

so 0 is the corrupted run and 1 the clean one: a denoising cell near 1 carries everything
the metric needs from the clean text; a noising cell near 0 is a cell the clean behaviour
cannot do without.

Unlike a one-forward-per-cell loop, many cells share a forward: the receiver batch is
repeated once per cell and each repeat carries its own patch (``cells_per_forward``).
Pairs may have different lengths: they are aligned by characters (:mod:`.align`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from semhooks.studies.patching.engine import (
    HEAD_SITES,
    Cell,
    Edit,
    Metric,
    Mode,
    PatchingError,
    PatchingSetup,
    check_heads,
    is_identity,
    prepare,
    receiver_metric,
    resolve_grid,
    run_cells,
)
from semhooks.studies.patching.result import PatchingResult, normalised

DEFAULT_SITES = ("resid_pre", "attn_out", "mlp_out")


@dataclass(frozen=True)
class CellScore:
    """One evaluated cell, as streamed by :func:`iter_activation_patching`."""

    cell: Cell
    score: float
    patched: torch.Tensor  # [pair] metric under the patch


def logit_diff(model: Any, answers: Sequence[Any], wrong: Sequence[Any]) -> Metric:
    """Metric: logit of each pair's answer minus logit of its wrong answer, at the last token.

    ``answers``/``wrong`` hold one entry per pair: a token id, or a string whose first token
    is used (write the leading space: ``" Paris"``).
    """
    from semhooks.backend.adapter import adapt

    a = torch.tensor(_first_tokens(adapt(model), answers, "answers"))
    w = torch.tensor(_first_tokens(adapt(model), wrong, "wrong"))
    if a.shape != w.shape:
        raise PatchingError(f"answers has {len(a)} entries and wrong has {len(w)}")

    def metric(logits: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        p = pair.to(logits.device)
        return logits[rows, a.to(logits.device)[p]] - logits[rows, w.to(logits.device)[p]]

    metric.answers = a  # type: ignore[attr-defined]
    return metric


def _first_tokens(adapter: Any, items: Sequence[Any], what: str) -> list[int]:
    out = []
    for i, x in enumerate(items):
        if isinstance(x, int):
            out.append(x)
            continue
        ids = adapter.to_token_ids([x])[0]
        if not ids:
            raise PatchingError(f"{what}[{i}] = {x!r} does not tokenise")
        out.append(int(ids[0]))
    return out


def plan_cells(
    sites: Sequence[str],
    layers: Sequence[int],
    labels: Sequence[str],
    n_heads: Mapping[str, int],
) -> list[Cell]:
    """Every cell of the grid, site-major, then layer, position, head. ``n_heads``: heads
    per per-head site (:func:`~semhooks.studies.patching.engine.check_heads`; ``{}`` when
    ``sites`` has none)."""
    cells: list[Cell] = []
    for s in sites:
        for layer in layers:
            for lab in labels:
                if s in HEAD_SITES:
                    cells.extend(Cell(s, layer, lab, h) for h in range(n_heads[s]))
                else:
                    cells.append(Cell(s, layer, lab))
    return cells


def default_cells_per_forward(setup: PatchingSetup, max_rows: int = 256) -> int:
    """Cells per forward so that one forward holds about ``max_rows`` rows."""
    return max(1, max_rows // setup.n_pairs)


def iter_activation_patching(
    setup: PatchingSetup,
    cells: Sequence[Cell],
    *,
    cells_per_forward: int | None = None,
    edit: Edit | None = None,
    skip_identity: bool = True,
    progress: bool = True,
) -> Iterator[CellScore]:
    """Evaluate ``cells`` (prepared by :func:`semhooks.studies.patching.engine.prepare`),
    yielding each cell's score as soon as its forward is done (streaming).

    ``skip_identity``: a plain patch (``edit=None``) that writes exactly what the receiver
    already holds in every pair (any token before the span: a causal model computed the
    same values in both runs) is not run; its metric is the receiver's own.
    """
    step = default_cells_per_forward(setup) if cells_per_forward is None else cells_per_forward
    if not isinstance(step, int) or step < 1:
        raise PatchingError(f"cells_per_forward must be >= 1, got {step}")
    bar = tqdm(total=len(cells), desc="patching", unit="cell", disable=not progress)
    try:
        if skip_identity and edit is None:
            same = {c for c in cells if is_identity(setup, c)}
            base = receiver_metric(setup)
            score = float(normalised(base[:, None], setup.clean_metric, setup.corrupted_metric))
            for cell in cells:
                if cell in same:
                    yield CellScore(cell, score, base.clone())
            bar.update(len(same))
            cells = [c for c in cells if c not in same]
        for start in range(0, len(cells), step):
            chunk = list(cells[start : start + step])
            patched = run_cells(setup, chunk, edit)
            for j, cell in enumerate(chunk):
                col = patched[:, j]
                value = normalised(col, setup.clean_metric, setup.corrupted_metric)
                yield CellScore(cell, float(value), col)
            bar.update(len(chunk))
    finally:
        bar.close()


def collect(
    setup: PatchingSetup,
    sites: Sequence[str],
    layers: Sequence[int],
    labels: Sequence[str],
    stream: Iterator[CellScore],
    n_heads: Mapping[str, int],
    **meta: Any,
) -> PatchingResult:
    """Fill the per-site grids of a :class:`PatchingResult` from streamed cell scores."""
    n = setup.n_pairs
    li = {layer: i for i, layer in enumerate(layers)}
    pi = {lab: j for j, lab in enumerate(labels)}
    scores, raw = {}, {}
    for s in sites:
        shape = (len(layers), len(labels)) + ((n_heads[s],) if s in HEAD_SITES else ())
        scores[s] = torch.full(shape, float("nan"))
        raw[s] = torch.full((n, *shape), float("nan"))
    for item in stream:
        c = item.cell
        idx: tuple[int, ...] = (li[c.layer], pi[c.position])
        if c.head is not None:
            idx = idx + (c.head,)
        scores[c.site][idx] = item.score
        raw[c.site][(slice(None), *idx)] = item.patched  # type: ignore[index]
    return PatchingResult(
        scores=scores,
        raw=raw,
        layers=list(layers),
        positions=list(labels),
        position_labels=setup.display(labels),
        clean_metric=setup.clean_metric,
        corrupted_metric=setup.corrupted_metric,
        mode=setup.mode,
        provenance=setup.adapter.provenance(n_pairs=n, clean=setup.clean.texts[:3]),
        **meta,
    )


def activation_patching(
    model: Any,
    clean: Sequence[str],
    corrupted: Sequence[str],
    metric: Metric,
    *,
    sites: Sequence[str] | str = DEFAULT_SITES,
    layers: Any = "all",
    positions: Sequence[str] | str | None = None,
    mode: Mode = "denoise",
    spans: Sequence[tuple[str, str]] | None = None,
    cells_per_forward: int | None = None,
    skip_identity: bool = True,
    progress: bool = True,
) -> PatchingResult:
    """Exact activation patching of every (site, layer, position[, head]) cell.

    Args:
        model: a TransformerLens model (bridge or HookedTransformer), decoder only.
        clean, corrupted: one corrupted text per clean text (they may differ in length).
        metric: ``metric(last_logits [row, vocab], pair [row]) -> [row]``, e.g.
            :func:`logit_diff`; read at each row's last token.
        sites: any of ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``
            and the per-head sites ``head`` (each head's output, ``attn.hook_z``), ``q``
            (each head's query, ``attn.hook_q``) and ``k`` (each key-value head's key,
            ``attn.hook_k``).
        layers: ``"all"``, an int or a list (negatives count from the top).
        positions: position labels (:mod:`semhooks.studies.patching.align`); None = every
            token of the template (``pre:*``, ``span:first``, ``span:last``, ``post:*``).
        mode: ``"denoise"`` (clean into corrupted) or ``"noise"`` (corrupted into clean).
        spans: per pair ``(clean substring, corrupted substring)``; default: where they differ.
        cells_per_forward: cells evaluated in one forward (default: ~256 rows per forward);
            1 is the one-forward-per-cell loop.
        skip_identity: do not run cells whose patch writes what the receiver already holds
            (tokens before the span); their score is exactly the receiver's (0 denoising).
        progress: a tqdm bar over cells.

    Returns:
        :class:`PatchingResult` with ``scores[site]`` ``[layer, position(, head)]``
        (``"k"``: one column per key-value head).
    """
    t0 = time.perf_counter()
    from semhooks.backend.adapter import adapt

    sites, layer_list = resolve_grid(adapt(model), sites, layers)
    if cells_per_forward is not None and (
        not isinstance(cells_per_forward, int) or cells_per_forward < 1
    ):
        raise PatchingError(f"cells_per_forward must be >= 1, got {cells_per_forward!r}")
    hooks = [(s, layer) for s in sites for layer in layer_list]
    setup = prepare(model, clean, corrupted, metric, mode=mode, spans=spans, hooks=hooks)
    labels = setup.labels(positions)
    n_heads = check_heads(setup, sites)
    cells = plan_cells(sites, layer_list, labels, n_heads)
    stream = iter_activation_patching(
        setup, cells, cells_per_forward=cells_per_forward, skip_identity=skip_identity,
        progress=progress,
    )  # fmt: skip
    result = collect(setup, sites, layer_list, labels, stream, n_heads, method="exact")
    result.seconds = time.perf_counter() - t0
    result.n_forwards = setup.n_forwards
    return result
