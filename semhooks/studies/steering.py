"""Effects of interventions: steering curves against a control, and greedy generation.

:func:`steering_curve` sweeps an intervention's strength ``alpha`` and records, at the last
token of each prompt, the probability of the target tokens and a logit difference, for
the intervention and for its control (by default a random direction of equal norm,
:func:`semhooks.interventions.random_control`). Computing is separate from plotting: the
result is a :class:`SteeringCurve` with ``.plot()`` and ``.to_dict()``.

:func:`generate` decodes greedily under interventions with a plain loop of full forward
passes over a left-padded batch (no KV cache), so every step sees the whole sequence and
position selections such as ``"generated_only"`` (columns from the prompt length on) and
spans found in the prompt batch are exact at every step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.backend.adapter import adapt
from semhooks.data.columns import from_columns
from semhooks.interventions import (
    Intervention,
    Patch,
    Placebo,
    intervene,
    placebo,
    random_control,
)
from semhooks.plots import new_figure, save_figure


# ---------------------------------------------------------------------- generation
def generate(
    model: Any,
    prompts: str | Sequence[str],
    interventions: Intervention | Sequence[Any] = (),
    max_new_tokens: int = 20,
    *,
    stop_at_eos: bool = True,
    return_full: bool = False,
) -> list[str]:
    """Greedy continuations of ``prompts`` under ``interventions``.

    The prompts are tokenised with left padding (``adapt(model).tokenize(prompts,
    padding_side="left")``: spans from ``find_span`` on that batch are valid positions) and
    the loop appends one argmax token per step, running a full forward with the attention
    mask each time. Interventions see ``prompt_length`` = the padded prompt width, so
    ``"prompt_only"``/``"generated_only"`` are exact. Returns the generated text (cut at the
    first end-of-sequence token), or prompt + generation with ``return_full=True``.
    """
    prompts = from_columns(prompts)
    adapter = adapt(model)
    adapter.require_eval()
    if adapter.is_encoder:
        raise ValueError(f"{adapter.name} is an encoder; generate() needs a decoder")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if isinstance(prompts, str):
        prompts = [prompts]
    batch = adapter.tokenize(list(prompts), padding_side="left")
    ids = batch.input_ids.to(adapter.device)
    mask = batch.attention_mask.to(adapter.device)
    if ids.shape[1] + max_new_tokens > adapter.n_ctx:
        raise ValueError(
            f"prompt ({ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"context window of {adapter.n_ctx} for {adapter.name}"
        )
    prompt_length = ids.shape[1]
    eos = getattr(adapter.tokenizer, "eos_token_id", None)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    items = [interventions] if isinstance(interventions, Intervention) else list(interventions)
    with intervene(model, *items, prompt_length=prompt_length), torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = adapter.logits(ids, mask)
            nxt = logits[:, -1].argmax(-1)
            if eos is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                done |= nxt == eos
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            if stop_at_eos and eos is not None and bool(done.all()):
                break
    out = []
    for row in range(ids.shape[0]):
        new = ids[row, prompt_length:].tolist()
        if eos is not None and eos in new:
            new = new[: new.index(eos)]
        text = adapter.tokenizer.decode(new, skip_special_tokens=True)
        out.append(batch.texts[row] + text if return_full else text)
    return out


# ---------------------------------------------------------------------- steering curve
@dataclass
class SteeringCurve:
    """Effect of an intervention on target tokens as its strength varies.

    Per alpha (``[n_alpha]``, means over prompts): ``prob`` = total probability of the
    target tokens at the last prompt token; ``logit_diff`` = mean target logit minus mean
    contrast logit (minus the mean logit over the vocabulary when no contrast tokens are
    given). ``control_*`` are the same under the control intervention. ``baseline_*`` are
    without any intervention. ``per_prompt_*`` are ``[n_alpha, n_prompts]``.
    """

    alphas: list[float]
    prob: list[float]
    logit_diff: list[float]
    control_prob: list[float] | None
    control_logit_diff: list[float] | None
    baseline_prob: float
    baseline_logit_diff: float
    target_tokens: list[str]
    contrast_tokens: list[str] | None
    intervention: dict[str, Any]
    control: dict[str, Any] | None
    per_prompt_prob: list[list[float]] = field(default_factory=list)
    per_prompt_control_prob: list[list[float]] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    control_kind: str | None = None

    @property
    def direction_norm(self) -> float | None:
        """``||v||`` of a Steer's direction (the mean over rows for per-row directions), else
        None."""
        direction = self.intervention.get("direction")
        if isinstance(direction, dict):  # Intervention.to_dict's tensor encoding
            direction = direction.get("__tensor__")
        if not isinstance(direction, list) or not direction:
            return None
        v = np.asarray(direction, dtype=np.float64)
        return float(np.linalg.norm(v, axis=-1).mean())

    def describe_intervention(self) -> str:
        """One line: what acts where, at which scale (``Steer at layer 12 (resid_post),
        ||v|| = 4.2: h <- h + alpha v``)."""
        kind = str(self.intervention.get("type", "intervention"))
        layers = self.intervention.get("layers")
        where = ""
        if layers is not None:
            many = isinstance(layers, list) and len(layers) != 1
            shown = layers[0] if isinstance(layers, list) and len(layers) == 1 else layers
            where = f" at layer{'s' if many else ''} {shown}"
            site = self.intervention.get("site")
            if site:
                where += f" ({site})"
        norm = self.direction_norm
        scale = f", ||v|| = {norm:.3g}: h <- h + alpha v" if norm is not None else ""
        return f"{kind}{where}{scale}"

    def describe_control(self) -> str:
        """The control in words (for legends and reports)."""
        if self.control is None:
            return "no control"
        if self.control_kind == "random":
            return "control: random direction of the same norm"
        if self.control_kind == "placebo":
            return "control: norm-matched placebo (random direction, same displacement size)"
        return f"control: {self.control.get('type', 'intervention')}"

    def logit_diff_label(self) -> str:
        """Which minus which the logit difference is."""
        other = "contrast tokens" if self.contrast_tokens else "all vocabulary"
        return f"mean logit(target tokens) - mean logit({other})"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data."""
        return asdict(self)

    def effect(self, what: str = "prob", *, signed: bool = False) -> tuple[float, float | None]:
        """(intervention, control) effect on ``what`` (``"prob"`` or ``"logit_diff"``).

        Default: the largest absolute change from the no-hook baseline over the alphas. With
        ``signed=True``: the value at the largest alpha minus the value at the smallest, i.e.
        how far pushing along the direction moves the readout *towards the target*. A random
        control of equal norm can move a readout a lot in either direction (large alphas
        disrupt the model), so the signed spread separates steering from disruption.
        """
        base = self.baseline_prob if what == "prob" else self.baseline_logit_diff
        main = self.prob if what == "prob" else self.logit_diff
        ctrl = self.control_prob if what == "prob" else self.control_logit_diff
        if signed:
            hi, lo = int(np.argmax(self.alphas)), int(np.argmin(self.alphas))
            m = float(main[hi] - main[lo])
            c = None if ctrl is None else float(ctrl[hi] - ctrl[lo])
            return m, c
        m = max(abs(x - base) for x in main)
        c = None if ctrl is None else max(abs(x - base) for x in ctrl)
        return m, c

    def plot(self, ax: Any = None, path: str | os.PathLike[str] | None = None) -> Figure:
        """P(target) and the logit difference against alpha, intervention vs control (dashed)
        and the no-hook baseline. The title states the intervention's layer and scale, the
        y-label which logits are subtracted, the legend what the control is.

        ``ax``: two axes to draw on (a new figure otherwise). Returns the Figure.
        """
        if ax is None:
            fig, axes = new_figure(2, width=4.8, height=3.8)
        else:
            axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
            # the root figure, also for axes on a SubFigure (its .figure is the root)
            owner = axes[0].figure
            fig = cast(Figure, owner if isinstance(owner, Figure) else owner.figure)
        targets = ", ".join(repr(t) for t in self.target_tokens[:4])
        contrast = ", ".join(repr(t) for t in (self.contrast_tokens or [])[:4])
        series = [
            ("prob", "P(target tokens), summed", f"targets: {targets}"),
            (
                "logit_diff",
                self.logit_diff_label(),
                f"{targets} minus {contrast}" if contrast else f"{targets} minus vocabulary mean",
            ),
        ]
        kind = str(self.intervention.get("type", "intervention"))
        for a, (key, label, title) in zip(axes, series, strict=False):
            a.plot(self.alphas, getattr(self, key), marker="o", label=f"{kind} along v")
            ctrl = getattr(self, f"control_{key}")
            if ctrl is not None:
                a.plot(self.alphas, ctrl, marker="x", linestyle="--", label=self.describe_control())
            a.axhline(getattr(self, f"baseline_{key}"), color="grey", lw=0.8, label="no hook")
            a.set_xlabel("alpha")
            a.set_ylabel(label, fontsize="small")
            a.set_title(title, fontsize="small")
            a.grid(True, alpha=0.3)
        axes[0].legend(fontsize="x-small")
        n = self.provenance.get("n_prompts")
        fig.suptitle(
            self.describe_intervention() + (f"; mean over {n} prompts" if n else ""), fontsize=10
        )
        if path is not None:
            save_figure(fig, path)
        return fig


def _token_ids(adapter: Any, tokens: Sequence[str | int], what: str) -> list[int]:
    ids = []
    for tok in tokens:
        if isinstance(tok, (int, np.integer)):
            if not 0 <= int(tok) < adapter.d_vocab:
                raise ValueError(f"{what} id {tok} is outside the vocabulary ({adapter.d_vocab})")
            ids.append(int(tok))
            continue
        enc = adapter.tokenizer(tok, add_special_tokens=False)["input_ids"]
        if not enc:
            raise ValueError(f"{what} {tok!r} is empty after tokenisation")
        # The first token decides the next-token prediction; a leading space matters.
        ids.append(int(enc[0]))
    if not ids:
        raise ValueError(f"no {what} given")
    return ids


def _scores(
    logits: Float[Tensor, "batch vocab"], target: list[int], contrast: list[int] | None
) -> tuple[Tensor, Tensor]:
    logits = logits.float()
    probs = logits.softmax(-1)[:, target].sum(-1)
    ref = logits[:, contrast].mean(-1) if contrast else logits.mean(-1)
    return probs, logits[:, target].mean(-1) - ref


def steering_curve(
    model: Any,
    prompts: Sequence[str],
    intervention: Intervention,
    alphas: Sequence[float],
    target_tokens: str | Sequence[str | int],
    *,
    contrast_tokens: str | Sequence[str | int] | None = None,
    control: str | Intervention | None = "random",
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> SteeringCurve:
    """Probability / logit difference of ``target_tokens`` as ``alpha`` varies.

    Each alpha runs ``intervention.with_alpha(alpha)`` (Steer/Swap/Ablate/Patch: ``alpha``;
    Clamp: the clamped ``value``) over the prompts (left padded) and reads the next-token
    distribution at the last prompt token. ``control`` is ``"random"`` (a random direction
    of equal norm, fixed across alphas), ``"placebo"`` (norm-matched displacement), an
    Intervention, or None. Token strings count by their first token (``" Paris"`` with its
    leading space is what follows ``"... is"``).
    """
    prompts = from_columns(prompts)
    adapter = adapt(model)
    adapter.require_eval()
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise ValueError("alphas is empty")
    if isinstance(target_tokens, str):
        target_tokens = [target_tokens]
    if isinstance(contrast_tokens, str):
        contrast_tokens = [contrast_tokens]
    target = _token_ids(adapter, target_tokens, "target token")
    contrast = _token_ids(adapter, contrast_tokens, "contrast token") if contrast_tokens else None
    kind: str | None = None
    if control == "random":
        ctrl: Intervention | None = random_control(intervention, seed)
        kind = "random"
    elif control == "placebo":
        ctrl = placebo(intervention, seed)
        kind = "placebo"
    elif control is None or isinstance(control, Intervention):
        ctrl = control
        kind = None if control is None else "custom"
    else:
        raise ValueError(
            f"control must be 'random', 'placebo', an Intervention or None: {control!r}"
        )
    batches = [
        adapter.tokenize(prompts[i : i + batch_size], padding_side="left")
        for i in range(0, len(prompts), batch_size)
    ]

    def run(iv: Intervention | None) -> tuple[Tensor, Tensor]:
        ps, ds = [], []
        for batch in batches:
            with intervene(model, *([iv] if iv is not None else [])):
                logits = adapter.forward(batch)
            assert logits is not None
            p, d = _scores(logits[:, -1], target, contrast)
            ps.append(p.cpu())
            ds.append(d.cpu())
        return torch.cat(ps), torch.cat(ds)

    base_p, base_d = run(None)
    prob, diff, cprob, cdiff, per, cper = [], [], [], [], [], []
    for alpha in tqdm(alphas, disable=not progress, desc="alphas"):
        p, d = run(intervention.with_alpha(alpha))
        prob.append(float(p.mean()))
        diff.append(float(d.mean()))
        per.append(p.tolist())
        if ctrl is not None:
            cp, cd = run(ctrl.with_alpha(alpha))
            cprob.append(float(cp.mean()))
            cdiff.append(float(cd.mean()))
            cper.append(cp.tolist())
    tok = adapter.tokenizer
    return SteeringCurve(
        alphas=alphas,
        prob=prob,
        logit_diff=diff,
        control_prob=cprob if ctrl is not None else None,
        control_logit_diff=cdiff if ctrl is not None else None,
        baseline_prob=float(base_p.mean()),
        baseline_logit_diff=float(base_d.mean()),
        target_tokens=[tok.decode([i]) for i in target],
        contrast_tokens=[tok.decode([i]) for i in contrast] if contrast else None,
        intervention=intervention.to_dict() if _small(intervention) else _describe(intervention),
        control=None if ctrl is None else (ctrl.to_dict() if _small(ctrl) else _describe(ctrl)),
        per_prompt_prob=per,
        per_prompt_control_prob=cper if ctrl is not None else None,
        provenance=adapter.provenance(n_prompts=len(prompts), seed=seed),
        control_kind=kind,
    )


def _small(iv: Intervention) -> bool:
    return not isinstance(iv, Patch) and not (
        isinstance(iv, Placebo) and isinstance(iv.inner, Patch)
    )


def _describe(iv: Intervention) -> dict[str, Any]:
    return {"type": type(iv).__name__, "repr": repr(iv)}


__all__ = ["SteeringCurve", "generate", "steering_curve"]
