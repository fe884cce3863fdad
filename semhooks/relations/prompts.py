"""Relation prompts: building (zero- or k-shot), token positions, validation, splits.

A prompt for relation r and subject s is ``template.format(s)``, optionally preceded by k
in-context examples ``template.format(s_j) + " " + o_j`` (one per line) drawn, seeded, from
other subjects of the relation (Hernandez et al. 2023). The answer is ``" " + object``.

- Subject position: the last token of the last occurrence of the subject in the prompt.
- Object positions: the positions whose next-token prediction is an answer token in
  ``prompt + " " + object`` (the last prompt token, then every answer token but the last).

:func:`validate` keeps the prompts the model answers correctly: greedy decoding reproduces
the answer's tokens. It checks this in one teacher-forced forward pass per batch (the argmax
at every object position equals the next answer token, which is exactly the condition for
greedy decoding to emit those tokens) and caches the verdicts per model under
``semhooks.cache_dir()/validation/``. Splits (train/test, LRE subsets) are in
:mod:`semhooks.relations.splits`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.backend.adapter import ModelAdapter, Tokenized, adapt, cache_dir
from semhooks.data.columns import from_columns
from semhooks.extraction.reader import read
from semhooks.extraction.spans import SpanNotFoundError, char_span, char_span_to_positions
from semhooks.io.artifacts import atomic_write_json
from semhooks.relations.data import Relation, RelationSample, load
from semhooks.relations.splits import balanced_subset, split  # re-exported: the 0.1 path

__all__ = [
    "EncodedPrompts",
    "NoValidPromptsError",
    "PromptStates",
    "RelationPrompt",
    "ValidationReport",
    "balanced_subset",
    "build_prompts",
    "encode_prompts",
    "prompt_states",
    "split",
    "validate",
]


class NoValidPromptsError(ValueError):
    """No prompt of a relation survived validation (the model answers none correctly)."""


@dataclass(frozen=True)
class RelationPrompt:
    """One prompt of a relation: the text up to the answer, its subject and its object.

    Attributes:
        text: the prompt, ending right before the answer (``"...\\nThe capital city of
            Spain is"``).
        subject: the subject; its last occurrence in ``text`` is the subject span.
        object: the expected answer, without the leading space.
        relation: the relation's name.
        template: the template the last line was formatted from (``"{}"`` for free text).
        examples: the in-context (subject, object) examples, in order.
    """

    text: str
    subject: str
    object: str
    relation: str = ""
    template: str = "{}"
    examples: tuple[RelationSample, ...] = ()

    @property
    def answer(self) -> str:
        """The continuation the model should produce: ``" " + object``."""
        return " " + self.object

    @property
    def full_text(self) -> str:
        """``text + " " + object`` (teacher forcing)."""
        return self.text + self.answer

    @property
    def key(self) -> str:
        """A stable hash of (text, object): the validation cache key."""
        return hashlib.sha1(f"{self.text}\x00{self.object}".encode()).hexdigest()[:20]

    def subject_char_span(self) -> tuple[int, int]:
        """Character span of the last occurrence of the subject in :attr:`text`."""
        try:
            return char_span(self.text, self.subject, "last")
        except SpanNotFoundError:
            raise SpanNotFoundError(
                f"subject {self.subject!r} does not occur in prompt {self.text!r}; pass the "
                "subject exactly as it is written in the prompt"
            ) from None


def _as_relation(relation: Relation | str) -> Relation:
    return relation if isinstance(relation, Relation) else load(relation)


def _pick_template(relation: Relation, template: str | int | None) -> str:
    if template is None:
        return relation.prompt_templates[0]
    if isinstance(template, int):
        if not -len(relation.prompt_templates) <= template < len(relation.prompt_templates):
            raise ValueError(
                f"template index {template} is out of range: relation {relation.name!r} has "
                f"{len(relation.prompt_templates)} prompt_templates"
            )
        return relation.prompt_templates[template]
    if template == "zs":
        return relation.prompt_templates_zs[0]
    if template.count("{}") != 1:
        raise ValueError(
            f"template {template!r} must contain exactly one '{{}}' where the subject goes, "
            "or be None (first template), an index, or 'zs' (first zero-shot template)"
        )
    return template


def build_prompts(
    relation: Relation | str,
    n_shot: int = 3,
    *,
    template: str | int | None = None,
    subjects: Sequence[str] | None = None,
    seed: int = 0,
) -> list[RelationPrompt]:
    """One prompt per sample of a relation, zero-shot or with ``n_shot`` in-context examples.

    The examples for subject s are drawn without replacement from the relation's other
    samples with a generator seeded by ``(seed, relation, s)``, so a prompt does not change
    when other subjects are added or removed. Each example is ``template.format(s_j) + " " +
    o_j`` on its own line, then ``template.format(s)`` ends the prompt.

    Args:
        relation: a :class:`Relation` or a name for :func:`semhooks.relations.load`.
        n_shot: number of in-context examples (0: zero-shot).
        template: None (the first ``prompt_templates``), an index into them, ``"zs"`` (the
            first ``prompt_templates_zs``), or a string with one ``{}``.
        subjects: build prompts only for these subjects (default: all, in sample order).
        seed: seeds the choice of examples.

    Raises:
        ValueError: ``n_shot`` is negative or the relation has fewer than ``n_shot + 1``
            samples; a subject is not in the relation.
    """
    rel = _as_relation(relation)
    if n_shot < 0:
        raise ValueError(f"n_shot must be >= 0, got {n_shot}")
    if n_shot >= len(rel.samples):
        raise ValueError(
            f"relation {rel.name!r} has {len(rel.samples)} samples: too few for {n_shot}-shot "
            f"prompts (each needs {n_shot} other subjects); lower n_shot"
        )
    tmpl = _pick_template(rel, template)
    by_subject = {s.subject: s for s in rel.samples}
    if subjects is None:
        chosen = list(rel.samples)
    else:
        missing = [s for s in subjects if s not in by_subject]
        if missing:
            raise ValueError(
                f"subjects {missing[:5]} are not samples of relation {rel.name!r} "
                f"(e.g. {rel.subjects[:3]})"
            )
        chosen = [by_subject[s] for s in subjects]
    prompts = []
    for sample in chosen:
        rng = random.Random(f"{seed}:{rel.name}:{sample.subject}")
        others = [s for s in rel.samples if s.subject != sample.subject]
        examples = tuple(rng.sample(others, n_shot)) if n_shot else ()
        lines = [tmpl.format(s.subject) + " " + s.object for s in examples]
        lines.append(tmpl.format(sample.subject))
        prompts.append(
            RelationPrompt(
                text="\n".join(lines),
                subject=sample.subject,
                object=sample.object,
                relation=rel.name,
                template=tmpl,
                examples=examples,
            )
        )
    return prompts


# ---------------------------------------------------------------------- positions
@dataclass
class EncodedPrompts:
    """Prompts tokenised with their subject and object positions.

    Attributes:
        prompts: the prompts, in order.
        batch: the tokenised texts (``prompt + " " + object`` when ``with_answer``).
        subject_positions: ``[n]`` the subject's last token in each row.
        object_positions: per row, the positions whose next token is an answer token
            (with_answer) or ``[last prompt token]`` (without).
        answer_ids: per row, the answer's token ids (with_answer) or ``[]``.
    """

    prompts: list[RelationPrompt]
    batch: Tokenized
    subject_positions: Int[Tensor, " n"]
    object_positions: list[list[int]]
    answer_ids: list[list[int]]


def encode_prompts(
    model: Any,
    prompts: Sequence[RelationPrompt],
    *,
    with_answer: bool = True,
    padding_side: Literal["left", "right"] = "right",
) -> EncodedPrompts:
    """Tokenise prompts and find the subject and object positions through char offsets.

    Raises:
        SpanNotFoundError: a subject does not occur in its prompt.
        ValueError: the answer's first token would merge with the prompt's last token (the
            prompt is then not a token prefix of ``prompt + " " + object``).
    """
    adapter = adapt(model)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given (empty list)")
    texts = [p.full_text if with_answer else p.text for p in prompts]
    batch = adapter.tokenize(texts, padding_side=padding_side)
    subj, objs, answers = [], [], []
    for i, p in enumerate(prompts):
        start, end = p.subject_char_span()
        positions = char_span_to_positions(batch, i, start, end)
        subj.append(positions[-1])
        if with_answer:
            # the span includes the answer's leading space: a tokenizer that makes the
            # space a token of its own then counts it as the first answer token
            a_pos = char_span_to_positions(batch, i, len(p.text), len(p.full_text))
            prev = a_pos[0] - 1
            if prev < 0 or int(batch.offsets[i, prev, 1]) > len(p.text) or prev < positions[-1]:
                raise ValueError(
                    f"the answer {p.answer!r} does not start a new token after prompt "
                    f"{p.text[-40:]!r} (the tokenizer merges them); end the template with a "
                    "complete word"
                )
            objs.append([a - 1 for a in a_pos])
            answers.append([int(batch.input_ids[i, a]) for a in a_pos])
        else:
            real = batch.attention_mask[i].nonzero().flatten()
            objs.append([int(real[-1])])
            answers.append([])
    return EncodedPrompts(prompts, batch, torch.tensor(subj, dtype=torch.long), objs, answers)


# ---------------------------------------------------------------------- validation
@dataclass
class ValidationReport:
    """Which prompts the model answers correctly.

    Attributes:
        prompts: every prompt checked, in order.
        correct: per prompt, whether greedy decoding reproduces the answer.
        top1: per prompt, the model's top-1 next token id after the prompt.
        from_cache: how many verdicts came from the cache.
    """

    prompts: list[RelationPrompt]
    correct: list[bool]
    top1: list[int]
    from_cache: int = 0
    model: str = ""

    @property
    def kept(self) -> list[RelationPrompt]:
        """The prompts the model answers correctly."""
        return [p for p, ok in zip(self.prompts, self.correct, strict=True) if ok]

    @property
    def by_relation(self) -> dict[str, tuple[int, int]]:
        """``{relation: (n_kept, n_checked)}``."""
        out: dict[str, list[int]] = OrderedDict()
        for p, ok in zip(self.prompts, self.correct, strict=True):
            counts = out.setdefault(p.relation, [0, 0])
            counts[0] += int(ok)
            counts[1] += 1
        return {k: (v[0], v[1]) for k, v in out.items()}

    def summary(self) -> str:
        """One line per relation: kept / checked."""
        return "\n".join(f"{r}: {k}/{n} kept" for r, (k, n) in self.by_relation.items())

    def __repr__(self) -> str:
        return (
            f"ValidationReport(model={self.model!r}, kept={sum(self.correct)}/"
            f"{len(self.prompts)}, relations={len(self.by_relation)})"
        )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "model"


def model_fingerprint(model: Any) -> str:
    """A short hash of the model's name, backend, hook layout and a few weight values.

    Two tiny random models with the same name but different seeds get different
    fingerprints, so cached validation verdicts are never shared between them.
    """
    adapter = adapt(model)
    params = list(adapter.model.parameters())
    h = hashlib.sha1()
    h.update(f"{adapter.name}|{adapter.backend}|{adapter.hook_layout}".encode())
    h.update(f"|{adapter.weights_processed}|{adapter.prepend_bos}".encode())
    for p in (params[0], params[len(params) // 2], params[-1]):
        h.update(p.detach().flatten()[:64].to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:12]


def _cache_file(adapter: ModelAdapter, fingerprint: str, relation: str) -> Path:
    folder = cache_dir() / "validation" / f"{_slug(adapter.name)}-{fingerprint}"
    return folder / f"{_slug(relation or 'unnamed')}.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def validate(
    model: Any,
    prompts: Sequence[RelationPrompt],
    *,
    batch_size: int = 16,
    cache: bool = True,
    on_empty: Literal["raise", "return"] = "raise",
    progress: bool = True,
) -> ValidationReport:
    """Keep the prompts the model answers correctly (greedy decoding gives the answer).

    A prompt passes when, teacher-forcing ``prompt + " " + object``, the model's argmax at
    every object position is the next answer token: exactly the condition for greedy
    decoding to emit the answer's tokens. Batched (right padding with an attention mask);
    verdicts are cached per model (name plus a weight fingerprint), relation and prompt hash
    under ``semhooks.cache_dir()/validation/`` (``cache=False`` neither reads nor writes).

    Returns:
        A :class:`ValidationReport` (``.kept``, ``.by_relation``, ``.summary()``).

    Raises:
        NoValidPromptsError: ``on_empty="raise"`` and no prompt of some relation passes.
    """
    prompts = from_columns(prompts, "records", build=RelationPrompt)
    adapter = adapt(model)
    adapter.require_eval()
    if adapter.is_encoder:
        raise ValueError(
            f"{adapter.name} is an encoder; relation prompts need a decoder (next-token "
            "prediction), e.g. semhooks.load_model('smollm2-135m')"
        )
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to validate (empty list); build them with build_prompts")
    fingerprint = model_fingerprint(adapter)
    verdicts: dict[int, tuple[bool, int]] = {}
    caches: dict[str, dict[str, Any]] = {}
    if cache:
        for i, p in enumerate(prompts):
            if p.relation not in caches:
                caches[p.relation] = _read_cache(_cache_file(adapter, fingerprint, p.relation))
            hit = caches[p.relation].get(p.key)
            if isinstance(hit, list) and len(hit) == 2:
                verdicts[i] = (bool(hit[0]), int(hit[1]))
    n_cached = len(verdicts)
    todo = [i for i in range(len(prompts)) if i not in verdicts]
    chunks = [todo[k : k + batch_size] for k in range(0, len(todo), batch_size)]
    for chunk in tqdm(chunks, desc="validate", disable=not progress or len(chunks) < 2):
        enc = encode_prompts(adapter, [prompts[i] for i in chunk], with_answer=True)
        # only the answer positions are unembedded (the forward stops after the last block)
        at = read(adapter, enc.batch, {}, logit_positions=enc.object_positions).position_logits
        assert at is not None
        for row, i in enumerate(chunk):
            pred = at[row].argmax(-1).tolist()
            verdicts[i] = (pred == enc.answer_ids[row], int(pred[0]))
    if cache and todo:
        for relation in {prompts[i].relation for i in todo}:
            path = _cache_file(adapter, fingerprint, relation)
            merged = _read_cache(path)
            merged.update(
                {
                    prompts[i].key: [verdicts[i][0], verdicts[i][1]]
                    for i in todo
                    if prompts[i].relation == relation
                }
            )
            try:
                atomic_write_json(path, merged)
            except OSError:  # a read-only cache must not stop validation
                pass
    report = ValidationReport(
        prompts=prompts,
        correct=[verdicts[i][0] for i in range(len(prompts))],
        top1=[verdicts[i][1] for i in range(len(prompts))],
        from_cache=n_cached,
        model=adapter.name,
    )
    if on_empty == "raise":
        empty = [r for r, (k, _) in report.by_relation.items() if k == 0]
        if empty:
            raise NoValidPromptsError(
                f"{adapter.name} answers none of the {report.by_relation[empty[0]][1]} "
                f"prompts of relation {empty[0]!r} correctly, so there is nothing to fit on. "
                "Try more in-context examples (n_shot), another template, or a relation the "
                "model knows (see ValidationReport.by_relation with on_empty='return')"
            )
    return report


# ---------------------------------------------------------------------- states
@dataclass
class PromptStates:
    """Subject and object states of prompts at some layers (float32, CPU).

    ``subject[l]`` ``[n, d]``: ``blocks.{l}.hook_resid_post`` at each subject's last token;
    ``object[l]`` ``[n, d]``: the same layer at the object positions, averaged
    (``aggregation="mean"``) or the first (the last prompt token); ``top1`` ``[n]``: the
    model's top-1 next token after each prompt (when the forward ran to the end).
    """

    subject: dict[int, Tensor]
    object: dict[int, Tensor]
    top1: Tensor | None = None


def prompt_states(
    model: Any,
    prompts: Sequence[RelationPrompt],
    layers: int | Sequence[int],
    *,
    aggregation: Literal["mean", "first"] = "mean",
    with_answer: bool | None = None,
    batch_size: int = 16,
    top1: bool = False,
    progress: bool = False,
) -> PromptStates:
    """Subject and object states of prompts at ``layers`` in batched forward passes.

    Object states need the answer (``with_answer`` defaults to ``aggregation == "mean"``);
    with ``aggregation="first"`` the object state is the last prompt token's. Without
    ``top1`` the forward stops after the deepest layer; with it, after the last block, and
    only the last prompt token is unembedded.
    """
    adapter = adapt(model)
    adapter.require_eval()
    layer_list = adapter.resolve_layers(layers if not isinstance(layers, int) else [layers])
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given (empty list)")
    use_answer = aggregation == "mean" if with_answer is None else with_answer
    if aggregation == "mean" and not use_answer:
        raise ValueError("aggregation='mean' needs the answers (with_answer=True)")
    subj: dict[int, list[Tensor]] = {layer: [] for layer in layer_list}
    objs: dict[int, list[Tensor]] = {layer: [] for layer in layer_list}
    tops: list[Tensor] = []
    sites = {layer: adapter.hook_name("resid_post", layer) for layer in layer_list}
    chunks = [prompts[k : k + batch_size] for k in range(0, len(prompts), batch_size)]
    for chunk in tqdm(chunks, desc="states", disable=not progress or len(chunks) < 2):
        enc = encode_prompts(adapter, chunk, with_answer=use_answer)
        sp = enc.subject_positions
        weights = torch.zeros(len(chunk), enc.batch.input_ids.shape[1])
        for r, pos in enumerate(enc.object_positions):
            if aggregation == "mean":
                weights[r, pos] = 1.0 / len(pos)
            else:
                weights[r, pos[0]] = 1.0
        last_prompt = torch.tensor([pos[0] for pos in enc.object_positions])

        def take(layer: int, x: Tensor, sp: Tensor = sp, w: Tensor = weights) -> Tensor:
            xf = x.to("cpu", torch.float32)
            return torch.stack([xf[torch.arange(len(sp)), sp], torch.einsum("bt,btd->bd", w, xf)])

        at = [[int(p)] for p in last_prompt] if top1 else None
        got = read(adapter, enc.batch, sites, take, logit_positions=at)
        for layer in layer_list:
            subj[layer].append(got.values[layer][0])
            objs[layer].append(got.values[layer][1])
        if top1:
            assert got.position_logits is not None
            tops.append(torch.cat(got.position_logits).argmax(-1).cpu())
    return PromptStates(
        subject={layer: torch.cat(v) for layer, v in subj.items()},
        object={layer: torch.cat(v) for layer, v in objs.items()},
        top1=torch.cat(tops) if top1 else None,
    )
