"""The machinery shared by exact, attribution and concept patching.

A :class:`PatchingSetup` tokenises the clean and corrupted texts (right padding, so a
column index is a token index), aligns every pair by characters (:mod:`.align`), runs both
baselines once, and keeps the *source* run's activations at the hook points a grid needs.
:func:`run_cells` then evaluates many cells in one forward: the receiver batch is repeated
once per cell, and each repeat gets its own patch (rows ``c * n_pairs .. (c + 1) * n_pairs``
carry cell ``c``). Every forward is one :func:`~semhooks.extraction.reader.read`; metrics
read the receiver's last token only (``ModelAdapter.logits_at``: the forward stops after the
last block and the unembedding is applied to that one position per row).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from semhooks.backend.adapter import Tokenized, adapt
from semhooks.backend.sites import attention_hook_name
from semhooks.extraction.reader import batch_from_ids, read
from semhooks.studies.patching.align import (
    AlignmentError,
    PairAlignment,
    align_pair,
    check_labels,
    default_labels,
    display_label,
    explicit_spans,
)

#: Sites a grid can patch: the adapter's residual and sublayer sites, plus three per-head
#: sites: ``"head"`` (each head's output before the output projection, ``attn.hook_z``),
#: ``"q"`` (each head's query, ``attn.hook_q``) and ``"k"`` (each key head's key,
#: ``attn.hook_k``; under grouped-query attention one key head serves several query heads).
GRID_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head", "q", "k")
#: The per-head sites and the attention hook each one patches
#: (:data:`semhooks.backend.sites.ATTENTION_SITES`).
HEAD_SITES = {"head": "z", "q": "q", "k": "k"}
Metric = Callable[[Float[Tensor, "row vocab"], Int[Tensor, " row"]], Float[Tensor, " row"]]
Mode = Literal["denoise", "noise"]
K = TypeVar("K", bound=Hashable)
# A cell edit: (receiver values [k, ...], source values [k, ...], cell) -> new values
Edit = Callable[[Tensor, Tensor, "Cell"], Tensor]


class PatchingError(ValueError):
    """A patching grid was asked for sites, layers, positions or pairs it cannot use."""


@dataclass(frozen=True)
class Cell:
    """One patch: a site at a layer, a position label, and a head (per-head sites only:
    :data:`HEAD_SITES`; for ``"k"`` a key-value head)."""

    site: str
    layer: int
    position: str
    head: int | None = None


@dataclass
class PatchingSetup:
    """Tokenised, aligned pairs and both baselines (see the module docstring)."""

    adapter: Any
    clean: Tokenized
    corrupted: Tokenized
    aligned: list[PairAlignment]
    metric: Metric
    mode: Mode
    clean_metric: Tensor = field(default_factory=lambda: torch.empty(0))
    corrupted_metric: Tensor = field(default_factory=lambda: torch.empty(0))
    sources: dict[tuple[str, int], Tensor] = field(default_factory=dict)
    receivers: dict[tuple[str, int], Tensor] = field(default_factory=dict)
    n_forwards: int = 0

    @property
    def n_pairs(self) -> int:
        return len(self.clean)

    @property
    def receiver(self) -> Tokenized:
        return self.corrupted if self.mode == "denoise" else self.clean

    @property
    def source(self) -> Tokenized:
        return self.clean if self.mode == "denoise" else self.corrupted

    def tokens(self, label: str, pair: int) -> tuple[list[int], list[int]]:
        """(receiver token indices, source token indices) of ``label`` in ``pair``."""
        pa = self.aligned[pair]
        c, k = pa.clean_tokens[label], pa.corrupted_tokens[label]
        return (k, c) if self.mode == "denoise" else (c, k)

    def labels(self, positions: Sequence[str] | str | None) -> list[str]:
        if positions is None:
            return check_labels(default_labels(self.aligned[0]), self.aligned)
        if isinstance(positions, str):
            positions = [positions]
        return check_labels(positions, self.aligned)

    def display(self, labels: Sequence[str]) -> list[str]:
        return [display_label(lab, self.clean, self.aligned[0]) for lab in labels]

    def last_index(self, batch: Tokenized) -> Tensor:
        return batch.attention_mask.sum(-1) - 1


@dataclass(frozen=True)
class LabelIndex:
    """Every aligned token of a grid's positions, flattened: entry ``i`` says that label
    ``label[i]`` of pair ``pair[i]`` covers receiver token ``receiver[i]``, whose source
    token is ``source[i]`` (one entry per token of a multi-token label)."""

    label: Int[Tensor, " n"]
    pair: Int[Tensor, " n"]
    receiver: Int[Tensor, " n"]
    source: Int[Tensor, " n"]
    n_labels: int


def label_index(setup: PatchingSetup, labels: Sequence[str]) -> LabelIndex:
    """The :class:`LabelIndex` of ``labels`` over every pair of ``setup``."""
    items: list[tuple[int, int, int, int]] = []
    for j, lab in enumerate(labels):
        for p in range(setup.n_pairs):
            recv, src = setup.tokens(lab, p)
            items.extend((j, p, tr, ts) for tr, ts in zip(recv, src, strict=True))
    cols = torch.tensor(items, dtype=torch.long).reshape(-1, 4).T
    return LabelIndex(cols[0], cols[1], cols[2], cols[3], len(labels))


def hook_name(adapter: Any, site: str, layer: int) -> str:
    """The hook point of ``site`` at ``layer`` (a per-head site: its attention hook,
    e.g. ``"head"``: ``blocks.{layer}.attn.hook_z``)."""
    if site not in GRID_SITES:
        raise PatchingError(f"unknown site {site!r}; a patching grid takes {list(GRID_SITES)}")
    if site in HEAD_SITES:
        return attention_hook(adapter, HEAD_SITES[site], layer)
    try:
        return str(adapter.hook_name(site, layer))
    except ValueError as exc:
        raise PatchingError(str(exc)) from exc


def attention_hook(adapter: Any, site: str, layer: int) -> str:
    """The per-head attention hook ``site`` (:data:`~semhooks.backend.sites.ATTENTION_SITES`:
    ``"q"``, ``"z"``, ``"pattern"``...) at ``layer``, refused where the model has none."""
    name = attention_hook_name(site, layer)
    hook_dict = getattr(adapter.model, "hook_dict", None)
    if hook_dict is not None and name not in hook_dict:
        raise PatchingError(
            f"{adapter.name} exposes no per-head hook {name!r}; patch 'attn_out' instead"
        )
    return name


def resolve_grid(
    adapter: Any, sites: Sequence[str] | str, layers: Any
) -> tuple[list[str], list[int]]:
    """Validated sites and layers (PatchingError naming what was asked and what exists)."""
    sites = [sites] if isinstance(sites, str) else list(sites)
    if not sites:
        raise PatchingError(f"sites is empty; choose from {list(GRID_SITES)}")
    for s in sites:
        hook_name(adapter, s, 0)
    try:
        layer_list = adapter.resolve_layers("all" if layers is None else layers)
    except (ValueError, TypeError) as exc:
        raise PatchingError(f"layers: {exc}") from exc
    return sites, layer_list


def prepare(
    model: Any,
    clean: Sequence[str],
    corrupted: Sequence[str],
    metric: Metric,
    *,
    mode: Mode = "denoise",
    spans: Sequence[tuple[str, str]] | None = None,
    hooks: Sequence[tuple[str, int]] = (),
    run_receiver: bool = True,
) -> PatchingSetup:
    """Tokenise, align, run both baselines and cache both runs' activations at ``hooks``
    (``(site, layer)`` pairs). ``run_receiver=False`` skips the receiver's baseline (a caller
    that runs it itself, with gradients, sets its metric)."""
    adapter = adapt(model)
    adapter.require_eval()
    if adapter.is_encoder:
        raise PatchingError(f"{adapter.name} is an encoder; patching reads next-token logits")
    if isinstance(clean, str) or isinstance(corrupted, str):
        raise PatchingError("clean and corrupted must be lists of texts (one pair per index)")
    if len(clean) != len(corrupted) or not clean:
        raise PatchingError(
            f"clean has {len(clean)} texts and corrupted {len(corrupted)}; give one corrupted "
            "text per clean text (and at least one pair)"
        )
    if mode not in ("denoise", "noise"):
        raise PatchingError(f"mode must be 'denoise' or 'noise', got {mode!r}")
    cb = adapter.tokenize(list(clean), padding_side="right")
    kb = adapter.tokenize(list(corrupted), padding_side="right")
    span_list = explicit_spans(clean, corrupted, spans) if spans is not None else None
    aligned = [
        align_pair(cb, kb, i, None if span_list is None else span_list[i]) for i in range(len(cb))
    ]
    setup = PatchingSetup(adapter, cb, kb, aligned, metric, mode)
    pairs = torch.arange(len(cb))
    names = {(s, layer): hook_name(adapter, s, layer) for s, layer in hooks}
    for which in ("clean", "corrupted"):
        batch = cb if which == "clean" else kb
        is_source = (which == "clean") == (mode == "denoise")
        if not is_source and not run_receiver:
            continue
        value, acts = evaluate(setup, batch, pairs, [], reads=names)
        if which == "clean":
            setup.clean_metric = value
        else:
            setup.corrupted_metric = value
        (setup.sources if is_source else setup.receivers).update(acts)
    return setup


def _keep(key: Any, acts: Tensor) -> Tensor:
    return acts.clone()


def evaluate(
    setup: PatchingSetup,
    batch: Tokenized,
    pairs: Int[Tensor, " row"],
    fwd_hooks: list[tuple[str, Any]],
    *,
    grad: bool = False,
    repeat: int = 1,
    reads: Mapping[K, str] | None = None,
) -> tuple[Float[Tensor, " row"], dict[K, Tensor]]:
    """The metric on ``batch`` repeated ``repeat`` times, under ``fwd_hooks``, and the
    activations ``{key: [row, pos, ...]}`` at ``reads`` (``{key: hook name}``, seen after
    ``fwd_hooks``) from the same forward: the forward stops after the last block; the
    unembedding reads each row's last token only.

    One pass of :func:`~semhooks.extraction.reader.read`: without ``grad`` the logits come
    from :meth:`~semhooks.backend.adapter.ModelAdapter.logits_at` (last token of each row);
    with ``grad`` (which ``logits_at`` cannot follow) the read stops at the last block's
    ``resid_post`` and that row's last position is unembedded under autograd.
    """
    adapter = setup.adapter
    mask = batch.attention_mask.repeat(repeat, 1)
    batch_r = batch_from_ids(batch.input_ids.repeat(repeat, 1), mask, texts=batch.texts * repeat)
    last = mask.sum(-1) - 1
    sites: dict[Any, str] = dict(reads or {})
    setup.n_forwards += 1
    if grad:
        final = _Final()
        sites[final] = adapter.hook_name("resid_post", adapter.n_layers - 1)

        def take(key: Any, acts: Tensor) -> Tensor:
            if key is final:
                return acts[torch.arange(acts.shape[0], device=acts.device), last.to(acts.device)]
            return _keep(key, acts)

        out = read(adapter, batch_r, sites, take, grad=True, edits=fwd_hooks)
        values = dict(out.values)
        logits = adapter.unembed(values.pop(final))
    else:
        out = read(
            adapter, batch_r, sites, _keep, edits=fwd_hooks,
            logit_positions=[[int(i)] for i in last],
        )  # fmt: skip
        assert out.position_logits is not None
        values, logits = dict(out.values), torch.cat(out.position_logits)
    result = setup.metric(logits.float(), pairs.to(logits.device))
    if not isinstance(result, Tensor) or tuple(result.shape) != (mask.shape[0],):
        raise PatchingError(
            f"the metric must return one value per row, shape ({mask.shape[0]},); got "
            f"{tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__}"
        )
    return (result if grad else result.detach().cpu().float()), values


class _Final:
    """The key of the last block's read in :func:`evaluate` (never equal to a caller's)."""


def _patch_hook(
    rows: Tensor, cols: Tensor, heads: Tensor | None, values: Tensor, cells: list[Cell],
    cell_of: Tensor, edit: Edit | None,
) -> Callable[[Tensor, Any], Tensor]:  # fmt: skip
    def hook(act: Tensor, hook: Any = None) -> Tensor:
        out = act.clone()
        r, c = rows.to(act.device), cols.to(act.device)
        idx = (r, c) if heads is None else (r, c, heads.to(act.device))
        src = values.to(act.device, act.dtype)
        if edit is None:
            out[idx] = src
        else:
            new = torch.empty_like(src)
            for j in cell_of.unique().tolist():
                sel = (cell_of == j).to(act.device)
                new[sel] = edit(act[idx][sel], src[sel], cells[j]).to(act.dtype)
            out[idx] = new
        return out

    return hook


def cell_hooks(
    setup: PatchingSetup, cells: Sequence[Cell], edit: Edit | None = None
) -> list[tuple[str, Any]]:
    """Hooks that apply cell ``c`` to rows ``c * n_pairs .. (c + 1) * n_pairs - 1``."""
    n = setup.n_pairs
    groups: dict[str, list[tuple[int, int, int, int | None, Tensor]]] = {}
    for c, cell in enumerate(cells):
        name = hook_name(setup.adapter, cell.site, cell.layer)
        src = setup.sources[(cell.site, cell.layer)]
        for p in range(n):
            recv, srct = setup.tokens(cell.position, p)
            for tr, ts in zip(recv, srct, strict=True):
                v = src[p, ts] if cell.head is None else src[p, ts, cell.head]
                groups.setdefault(name, []).append((c, c * n + p, tr, cell.head, v))
    hooks = []
    for name, items in groups.items():
        cell_of = torch.tensor([it[0] for it in items])
        rows = torch.tensor([it[1] for it in items])
        cols = torch.tensor([it[2] for it in items])
        heads = None if items[0][3] is None else torch.tensor([it[3] for it in items])
        values = torch.stack([it[4] for it in items])
        hooks.append((name, _patch_hook(rows, cols, heads, values, list(cells), cell_of, edit)))
    return hooks


def run_cells(
    setup: PatchingSetup, cells: Sequence[Cell], edit: Edit | None = None
) -> Float[Tensor, "pair cell"]:
    """The patched metric of every pair under each cell, all cells in one forward."""
    n = setup.n_pairs
    pairs = torch.arange(n).repeat(len(cells))
    values, _ = evaluate(
        setup, setup.receiver, pairs, cell_hooks(setup, cells, edit), repeat=len(cells)
    )
    return values.view(len(cells), n).T


def is_identity(setup: PatchingSetup, cell: Cell, atol: float = 1e-6) -> bool:
    """Whether patching ``cell`` writes what the receiver already holds, in every pair
    (tokens before the span of a causal model: both runs computed the same values)."""
    src, recv = setup.sources[(cell.site, cell.layer)], setup.receivers[(cell.site, cell.layer)]
    for p in range(setup.n_pairs):
        tr, ts = setup.tokens(cell.position, p)
        a, b = src[p, ts], recv[p, tr]
        if cell.head is not None:
            a, b = a[:, cell.head], b[:, cell.head]
        if not torch.allclose(a, b, rtol=1e-5, atol=atol):
            return False
    return True


def receiver_metric(setup: PatchingSetup) -> Tensor:
    """The receiver run's metric per pair (the metric of an identity patch)."""
    return setup.corrupted_metric if setup.mode == "denoise" else setup.clean_metric


def check_heads(setup: PatchingSetup, sites: Sequence[str]) -> dict[str, int]:
    """Heads per layer of each per-head site among ``sites`` (``"k"``: key-value heads)."""
    out = {}
    for site in sites:
        if site not in HEAD_SITES:
            continue
        key = next(k for k in setup.sources if k[0] == site)
        act = setup.sources[key]
        if act.ndim != 4:
            raise AlignmentError(
                f"attn.hook_{HEAD_SITES[site]} has shape {tuple(act.shape)}; expected "
                "[batch, pos, head, d_head]"
            )
        out[site] = int(act.shape[2])
    return out
