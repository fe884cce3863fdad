"""Architecture conformance: every tiny family x backend against the Hugging Face model's own
numbers (issue 16).

Each test is one cell of the support table (``scripts/support_table.py`` renders the README
block from ``conformance.json``, which this module writes at the end of the session; the last
test checks that the README's block equals the rendering of this run). A cell is ``pass``,
``n/a: reason`` (the feature does not apply, and semhooks says so with an error naming the
architecture), or ``fails: reason`` (the test fails, so CI is red until it is fixed or turned
into a clear error).

Only public semhooks names are used: ``semhooks`` top level, ``semhooks.interventions``,
``semhooks.relations``, ``semhooks.testing``/``semhooks.tiny_models`` and the
``ModelAdapter`` returned by ``semhooks.adapt``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import semhooks as sh
from semhooks.backend.hooked import hooked_transformer_available
from semhooks.relations import RelationPrompt, prompt_jacobian, reference_jacobian
from semhooks.testing import tiny_hf_model, tiny_model
from semhooks.tiny_models import ARCHS

pytestmark = pytest.mark.backend

ROOT = Path(__file__).resolve().parents[1]
N_LAYERS, D_MODEL, SEED = 2, 32, 0
TEXTS = ["The capital of France is Paris", "I loved this movie", "Bat, Rabbit, Ant, Fox"]
FEATURES = {
    "sites": "every site resolves to a hook that fires once; resid_pre/mid/post add up",
    "states": "extract_states equals the HF hidden states (every layer and token; left and "
    "right padding; batched == one by one)",
    "readout": "final norm + unembedding equals the model's logits; the semantic basis reads "
    "the model's own W_U",
    "steer/ablate/patch": "each intervention equals a hand-written edit of the same hook",
    "lre_jacobian": "the fast LRE Jacobian equals autograd of a full forward",
    "kv_prefix": "the prefix-KV forward equals the full forward, or is declined with a reason",
    "generate": "a greedy step under Steer equals the argmax of the steered logits",
    "save_load": "LayerStates round-trips with provenance naming the architecture",
    "bfloat16": "every oracle above (those that apply) with a bfloat16 model, to tolerances "
    "of a few bfloat16 eps; LRE Jacobians in float32",
    "float16": "every oracle above (those that apply) with a float16 model, to tolerances "
    "of a few float16 eps; LRE Jacobians in float32",
    "device_map": "every oracle above (those that apply) with the HF model dispatched by "
    "accelerate (layers on two devices: two CUDA devices when present, else CPU placement "
    "logic)",
}
BACKENDS = ("bridge", "hooked")
# benchmarks/gpu_conformance.py runs this file with SEMHOOKS_CONFORMANCE_DEVICE=cuda.
DEVICE = os.environ.get("SEMHOOKS_CONFORMANCE_DEVICE", "cpu")
RESULTS: dict[str, dict[str, dict[str, str]]] = {}


# ---------------------------------------------------------------------- recording
class NotApplicable(Exception):
    """The feature does not apply to this architecture (the reason goes in the table)."""


class Refused(Exception):
    """semhooks refuses the feature for this architecture with a clear error (a known
    defect outside semhooks); the cell reads ``fails: reason`` and the test passes."""


@contextlib.contextmanager
def cell(arch: str, backend: str, feature: str) -> Iterator[list[str]]:
    """Record the outcome of one table cell; failures are re-raised after recording.

    The body may append short notes (``pass (note)`` in the table)."""
    slot = RESULTS.setdefault(backend, {}).setdefault(arch, {})
    notes: list[str] = []
    try:
        yield notes
    except NotApplicable as exc:
        slot[feature] = f"n/a: {exc}"
        return
    except Refused as exc:
        slot[feature] = f"fails: {exc}"
        return
    except BaseException as exc:
        if type(exc).__name__ == "Skipped":
            slot[feature] = f"skipped: {exc}"
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            slot[feature] = f"fails: {type(exc).__name__}: {first[:120]}"
        raise
    slot[feature] = f"pass ({'; '.join(notes)})" if notes else "pass"


def payload() -> dict[str, Any]:
    """What ``scripts/support_table.py`` renders: this run's cells and their legend."""
    return {
        "transformer_lens": tl_version(),
        "features": FEATURES,
        "archs": {a: list(ARCHS[a].traits) for a in ARCHS},
        "results": RESULTS,
    }


def tl_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def pinned_transformer_lens(constraints: str = "constraints.txt") -> str | None:
    for line in (ROOT / constraints).read_text(encoding="utf-8").splitlines():
        if line.lower().startswith("transformer-lens=="):
            return line.split("==", 1)[1].strip()
    return None


@pytest.fixture(scope="session", autouse=True)
def write_results() -> Iterator[None]:
    yield
    if not RESULTS:
        return
    out = Path(os.environ.get("SEMHOOKS_CONFORMANCE_JSON", ROOT / "build" / "conformance.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload(), indent=1), encoding="utf-8")
    tmp.replace(out)


# ---------------------------------------------------------------------- models
@functools.cache
def _model(arch: str, backend: str, dtype: torch.dtype = torch.float32) -> Any:
    model = tiny_model(arch, seed=SEED, n_layers=N_LAYERS, d_model=D_MODEL, backend=backend)
    if (DEVICE, dtype) == ("cpu", torch.float32):
        return model
    if backend == "hooked":
        # HookedTransformer.to takes one device or dtype (and updates cfg.dtype/cfg.device).
        return model.to(dtype, print_details=False).to(DEVICE, print_details=False)
    return model.to(DEVICE, dtype)


@functools.cache
def _reference(arch: str, dtype: torch.dtype = torch.float32) -> Any:
    """A separate copy of the same Hugging Face model (same seed), the oracle."""
    hf, _ = tiny_hf_model(arch, seed=SEED, n_layers=N_LAYERS, d_model=D_MODEL)
    return hf.to(DEVICE, dtype)


def get_model(arch: str, backend: str, dtype: torch.dtype = torch.float32) -> Any:
    if backend == "hooked" and not hooked_transformer_available():
        pytest.skip("HookedTransformer needs TransformerLens 3.x (make tl3)")
    with warnings.catch_warnings():
        # transformers' notices about randomly initialised tiny configs.
        warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
        try:
            return _model(arch, backend, dtype)
        except ValueError as exc:
            if backend == "hooked" and "cannot build model_type" in str(exc):
                # No HookedTransformer for this architecture in TransformerLens 3.x: the
                # error names the model type and says why.
                assert f"model_type={ARCHS_MODEL_TYPE.get(arch, arch)!r}" in str(exc), exc
                raise NotApplicable(str(exc).split(": ", 1)[1].split(". Supported")[0]) from exc
            # An older TransformerLens (3.x in CI) may lack this family's bridge adapter:
            # TransformerLens refuses it by name. The pinned version must support them all.
            version = tl_version()
            if "supported architecture" in str(exc) and version != pinned_transformer_lens():
                raise NotApplicable(f"TransformerLens {version} has no bridge for it") from exc
            raise


@functools.cache
def _hf_forward(arch: str, ids: tuple[int, ...], dtype: torch.dtype) -> Any:
    text_ids = torch.tensor([ids], device=DEVICE)
    with torch.no_grad():
        out = _reference(arch, dtype)(
            text_ids, attention_mask=torch.ones_like(text_ids), output_hidden_states=True
        )
    return {
        "hidden_states": [h.float().cpu() for h in out.hidden_states],
        "logits": out.logits.float().cpu(),
    }


def hf_states(arch: str, text_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> Any:
    """The reference model's output (``hidden_states``, ``logits``) for one unpadded row."""
    return _hf_forward(arch, tuple(text_ids[0].tolist()), dtype)


def tol(dtype: torch.dtype) -> dict[str, float]:
    """Tolerances for two computations of the same model in ``dtype`` that round in a
    different order (semhooks vs the HF model; a hook vs a hand-written edit; cached vs
    full forward).

    Low precision: each of the ~8 rounded operations an activation of the tiny model (2
    layers, d=32, activations of order 1) passes through adds up to eps/2 relative error,
    so two orders differ by up to ~4 eps relative, and by ~8 eps absolute near the largest
    values: ``atol = 8 eps``, ``rtol = 4 eps`` (bfloat16 eps = 2**-7: 0.0625, 0.031;
    float16 eps = 2**-10: 0.0078, 0.0039). float32 keeps the float32 columns' 1e-4.
    """
    if dtype == torch.float32:
        return {"atol": 1e-4, "rtol": 1e-4}
    eps = torch.finfo(dtype).eps
    return {"atol": 8 * eps, "rtol": 4 * eps}


def arch_name(adapter: Any) -> str:
    return str(adapter.model_type)


PARAMS = [pytest.param(a, b, id=f"{a}-{b}") for b in BACKENDS for a in ARCHS]


# ---------------------------------------------------------------------- the oracles
def check_states(
    model: Any,
    arch: str,
    dtype: torch.dtype = torch.float32,
    sides: tuple[str, ...] = ("right", "left"),
) -> None:
    """Every layer and token: semhooks, batched with left and right padding, equals the HF
    model run on each text alone (so batched == one by one as well)."""
    adapter = sh.adapt(model)
    rows = [adapter.tokenize([t]) for t in TEXTS]
    positions = [list(range(int(r.attention_mask.sum()))) for r in rows]
    ref = [hf_states(arch, r.input_ids, dtype)["hidden_states"] for r in rows]
    for side in sides:
        got = sh.extract_states(
            model, TEXTS, "all", tokens=positions, pool=None, padding_side=side, progress=False
        )
        assert got.item_index is not None and got.positions is not None
        for layer in range(N_LAYERS):
            h = got.layer(layer).float()
            for i in range(len(TEXTS)):
                mine = h[got.item_index == i]
                want = ref[i][layer + 1][0].float()
                if layer == N_LAYERS - 1 and not torch.allclose(mine, want, **tol(dtype)):
                    # HF's last hidden state is after the final norm in decoders.
                    with torch.no_grad():
                        mine = adapter.final_norm(mine.to(adapter.dtype)).float().cpu()
                torch.testing.assert_close(
                    mine,
                    want,
                    **tol(dtype),
                    msg=lambda m, s=side, L=layer, i=i: (
                        f"{arch}: layer {L}, text {i}, {s} padding: {m}"
                    ),
                )


def check_readout(model: Any, arch: str, dtype: torch.dtype = torch.float32) -> None:
    """``unembed(final_norm(resid_post[-1]))`` equals the HF logits at every position."""
    adapter = sh.adapt(model)
    if adapter.is_encoder:
        # The MLM head (dense + norm + decoder) is not a final norm + unembedding; semhooks
        # reads encoders through their hidden states only.
        raise NotApplicable("encoder: an MLM head, not a final norm + unembedding")
    rows = [adapter.tokenize([t]) for t in TEXTS]
    positions = [list(range(int(r.attention_mask.sum()))) for r in rows]
    st = sh.extract_states(model, TEXTS, -1, tokens=positions, pool=None, progress=False)
    assert st.item_index is not None
    with torch.no_grad():
        logits = adapter.unembed(st.layer(-1).to(adapter.device)).float().cpu()
    for i, (text, row) in enumerate(zip(TEXTS, rows, strict=True)):
        want = hf_states(arch, row.input_ids, dtype)["logits"][0]
        torch.testing.assert_close(
            logits[st.item_index == i],
            want,
            **tol(dtype),
            msg=lambda m, t=text: f"{arch}: logit readout of {t!r}: {m}",
        )
    w_u = _reference(arch, dtype).get_output_embeddings().weight.detach().T.cpu()
    # The semantic basis s_i = G^-1 u_i (G = W_U W_U^T) from the model's own unembedding.
    basis = sh.semantic_basis(model, tokens=[0, 1, 2], cache=False)
    w = w_u.double()
    want_basis = torch.linalg.solve(w @ w.T, w[:, :3]).T.float()
    torch.testing.assert_close(basis.vectors.float().cpu(), want_basis, atol=1e-4, rtol=1e-3)


def check_sites(
    model: Any, arch: str, dtype: torch.dtype = torch.float32, notes: list[str] | None = None
) -> None:
    """Every site resolves to a hook that fires once, and the residual sites add up."""
    adapter = sh.adapt(model)
    got: dict[str, list[torch.Tensor]] = {}
    hooks, missing = [], set()
    for site in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
        for layer in range(N_LAYERS):
            try:
                name = adapter.hook_name(site, layer)
            except ValueError as exc:
                # Allowed only where the architecture has no such point, with a clear error.
                if adapter.is_encoder and site in ("resid_mid", "attn_out"):
                    assert arch_name(adapter) in str(exc) and site in str(exc), exc
                else:
                    assert site == "resid_mid" and arch_name(adapter) in str(exc), exc
                missing.add(site)
                continue

            def keep(x: torch.Tensor, hook: Any, key: str = f"{site}.{layer}") -> None:
                got.setdefault(key, []).append(x.detach().clone())

            hooks.append((name, keep))
    batch = adapter.tokenize(TEXTS)
    adapter.forward(batch, hooks)
    assert all(len(v) == 1 for v in got.values()), {k: len(v) for k, v in got.items()}
    assert len(got) == len(hooks)
    m = batch.attention_mask.bool()
    for layer in range(N_LAYERS):
        g = {k.split(".")[0]: v[0][m] for k, v in got.items() if k.endswith(f".{layer}")}
        assert g["resid_post"].shape[-1] == D_MODEL
        if layer:
            torch.testing.assert_close(g["resid_pre"], got[f"resid_post.{layer - 1}"][0][m])
        if adapter.is_encoder:  # post-LN: LN(resid_mid + mlp_out) is the block's output
            block = _reference(arch, dtype).base_model.encoder.layer[layer]
            assert missing == {"resid_mid", "attn_out"}, missing
            for i, n in enumerate(batch.attention_mask.sum(1).tolist()):
                x = got[f"resid_pre.{layer}"][0][i : i + 1, :n]
                with torch.no_grad():  # one unpadded row: no mask needed
                    out = block(x.to(next(block.parameters()).device))
                out = out[0] if isinstance(out, tuple) else out
                post = got[f"resid_post.{layer}"][0][i, :n]
                torch.testing.assert_close(post.cpu(), out[0].cpu(), **tol(dtype))
        elif "resid_mid" in missing:  # parallel attention + MLP: one shared input
            total = g["resid_pre"] + g["attn_out"] + g["mlp_out"]
            torch.testing.assert_close(g["resid_post"], total, **tol(dtype))
        else:
            mid = g["resid_pre"] + g["attn_out"]
            torch.testing.assert_close(g["resid_mid"], mid, **tol(dtype))
            post = g["resid_mid"] + g["mlp_out"]
            torch.testing.assert_close(g["resid_post"], post, **tol(dtype))
    if notes is None:
        return
    if adapter.is_encoder:
        notes.append("post-LN: resid_mid, attn_out refused by name")
    elif missing:
        notes.append("no resid_mid: parallel attention + MLP (hook_name says so)")


@pytest.mark.parametrize(("arch", "backend"), PARAMS)
def test_sites(arch: str, backend: str) -> None:
    with cell(arch, backend, "sites") as notes:
        check_sites(get_model(arch, backend), arch, notes=notes)


@pytest.mark.parametrize(("arch", "backend"), PARAMS)
def test_states(arch: str, backend: str) -> None:
    with cell(arch, backend, "states"):
        check_states(get_model(arch, backend), arch)


@pytest.mark.parametrize(("arch", "backend"), PARAMS)
def test_readout(arch: str, backend: str) -> None:
    with cell(arch, backend, "readout"):
        check_readout(get_model(arch, backend), arch)


def _capture(model: Any, batch: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(activation at hook ``name``, logits) of a plain forward."""
    adapter = sh.adapt(model)
    seen: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook: Any) -> None:
        seen["x"] = x.detach().clone()

    logits = adapter.forward(batch, [(name, keep)])
    assert logits is not None
    return seen["x"], logits.float().cpu()


def _run(model: Any, batch: Any, *interventions: Any) -> torch.Tensor:
    adapter = sh.adapt(model)
    ids, mask = batch.input_ids.to(adapter.device), batch.attention_mask.to(adapter.device)
    with sh.intervene(model, *interventions), torch.no_grad():
        return model(ids, attention_mask=mask, return_type="logits").float().cpu()


def check_interventions(model: Any, arch: str, dtype: torch.dtype = torch.float32) -> None:
    """Steer and Ablate equal hand-written hooks; patching the clean activation into a
    corrupted run recovers the clean logits exactly."""
    adapter = sh.adapt(model)
    batch = adapter.tokenize(TEXTS)
    name = adapter.hook_name("resid_post", 0)
    clean_act, clean = _capture(model, batch, name)
    v = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(1))
    u = v / v.norm()
    m = batch.attention_mask.bool()  # padding columns: semhooks leaves them alone
    for iv, edit in (
        (sh.Steer(v, alpha=2.0, layers=[0]), lambda h: h + 2.0 * v.to(h)),
        (sh.Ablate(v, layers=[0]), lambda h: h - (h @ u.to(h))[..., None] * u.to(h)),
    ):
        want = adapter.forward(batch, [(name, lambda x, hook, e=edit: e(x))])
        assert want is not None
        want = want.cpu()
        got = _run(model, batch, iv)
        assert not torch.allclose(want.float()[m], clean[m], atol=1e-3), f"{iv!r}: no effect"
        torch.testing.assert_close(got[m], want.float()[m], **tol(dtype))
    corrupted = dataclass_replace(batch, batch.input_ids.flip(0))
    patched = _run(model, corrupted, sh.Patch(clean_act, layers=[0]))
    assert not torch.allclose(_run(model, corrupted)[m], clean[m], atol=1e-3)
    torch.testing.assert_close(patched[m], clean[m], **tol(dtype))


@pytest.mark.parametrize(("arch", "backend"), PARAMS)
def test_interventions(arch: str, backend: str) -> None:
    with cell(arch, backend, "steer/ablate/patch"):
        check_interventions(get_model(arch, backend), arch)


def dataclass_replace(batch: Any, input_ids: torch.Tensor) -> Any:
    """The batch with other token ids (same layout: rows whose masks agree keep their ids)."""
    import dataclasses

    same = (batch.attention_mask == batch.attention_mask.flip(0)).all(-1)
    ids = torch.where(same[:, None], input_ids, (batch.input_ids + 7) % 50 + 10)
    ids = torch.where(batch.attention_mask.bool(), ids, batch.input_ids)
    return dataclasses.replace(batch, input_ids=ids)


PROMPT = RelationPrompt(text="The capital of France is", subject="France", object="Paris")


# OPT's attention receives the cache under both names through the adapter's cache-kwarg
# shim (transformers 5.24 renamed past_key_values to cache); the same object, harmless.
BOTH_CACHE_NAMES = pytest.mark.filterwarnings(
    "ignore:Both `past_key_values` and `cache` are set:FutureWarning"
)


def check_lre_jacobian(model: Any, arch: str, dtype: torch.dtype = torch.float32) -> None:
    """The fast LRE Jacobian equals autograd of a full forward of the same model.

    Both are returned in float32 whatever the model's dtype (the subject state enters as a
    float32 leaf and is cast to the model's dtype in the hook). In float32 the two differ
    only by summation order. In a low-precision model both differentiate the same rounded
    forward, but the fast path may run the prefix through a KV cache and reorders the
    backward's accumulations, so entries may differ by a few units of the dtype's eps
    relative to the largest entry (``tol(dtype)`` scaled by ``max |J|``, which the residual
    stream's identity path keeps near 1 on a 2-layer model).
    """
    if sh.adapt(model).is_encoder:
        with pytest.raises(ValueError, match="encoder"):
            prompt_jacobian(model, PROMPT, 0, 1)
        raise NotApplicable("encoder: LREs need a causal decoder (refused by name)")
    J, s, o = prompt_jacobian(model, PROMPT, 0, N_LAYERS - 1)
    J_ref, s_ref, o_ref = reference_jacobian(model, PROMPT, 0, N_LAYERS - 1)
    assert J.dtype == J_ref.dtype == torch.float32, (J.dtype, J_ref.dtype)
    if dtype == torch.float32:
        torch.testing.assert_close(s, s_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(o, o_ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(J, J_ref, atol=1e-4, rtol=1e-3)
        return
    scale = float(J_ref.abs().max().clamp(min=1.0))
    torch.testing.assert_close(s.float().cpu(), s_ref.cpu(), **tol(dtype))
    torch.testing.assert_close(o.float().cpu(), o_ref.cpu(), **tol(dtype))
    t = tol(dtype)
    torch.testing.assert_close(J.cpu(), J_ref.cpu(), atol=t["atol"] * scale, rtol=t["rtol"])


@BOTH_CACHE_NAMES
@pytest.mark.parametrize(("arch", "backend"), PARAMS)
def test_lre_jacobian(arch: str, backend: str) -> None:
    with cell(arch, backend, "lre_jacobian"):
        check_lre_jacobian(get_model(arch, backend), arch)


def check_kv_prefix(model: Any, arch: str, dtype: torch.dtype = torch.float32) -> None:
    """The prefix-KV forward equals the full forward, or is declined with a reason."""
    adapter = sh.adapt(model)
    reason = adapter.kv_cache_unsupported()
    if reason is not None:
        with pytest.raises(ValueError, match="no KV prefix cache"):
            adapter.new_kv_cache()
        raise NotApplicable(f"declined: {reason.split(': ', 1)[-1]}")
    batch = adapter.tokenize([TEXTS[0]])
    full = adapter.forward(batch)
    assert full is not None
    k = 3
    cache = adapter.new_kv_cache()
    with torch.no_grad():
        first = adapter.forward_on_cache(batch.input_ids[:, :k], cache)
        rest = adapter.forward_on_cache(batch.input_ids[:, k:], cache)
    assert first is not None and rest is not None
    assert adapter.kv_cache_length(cache) == batch.input_ids.shape[1]
    full = full.float().cpu()
    torch.testing.assert_close(first.float().cpu(), full[:, :k], **tol(dtype))
    torch.testing.assert_close(rest.float().cpu(), full[:, k:], **tol(dtype))


@BOTH_CACHE_NAMES
@pytest.mark.parametrize(("arch", "backend"), PARAMS)
def test_kv_prefix(arch: str, backend: str) -> None:
    with cell(arch, backend, "kv_prefix"):
        check_kv_prefix(get_model(arch, backend), arch)


def check_generate(model: Any, arch: str, dtype: torch.dtype = torch.float32) -> None:
    """A greedy step under Steer equals the argmax of the steered logits."""
    adapter = sh.adapt(model)
    prompt = "The capital of Germany is"
    v = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(2)) * 3
    steer = sh.Steer(v, alpha=1.0, layers=[0])
    if adapter.is_encoder:
        with pytest.raises(ValueError, match="encoder"):
            sh.generate(model, prompt, steer, max_new_tokens=1)
        raise NotApplicable("encoder: generate() refuses it by name")
    name = adapter.hook_name("resid_post", 0)
    batch = adapter.tokenize([prompt], padding_side="left")
    logits = adapter.forward(batch, [(name, lambda x, hook: x + v.to(x))])
    assert logits is not None
    last = logits[0, -1].float()
    # In low precision, tokens whose steered logits tie with the maximum within the
    # dtype's tolerance are all valid greedy steps (the steer may round differently).
    near = (last >= last.max() - tol(dtype)["atol"]).nonzero().flatten().tolist()
    got = sh.generate(model, prompt, steer, max_new_tokens=1, stop_at_eos=False)
    tokens = [adapter.tokenizer.decode([t], skip_special_tokens=True) for t in near]
    assert len(got) == 1 and got[0] in tokens, (got, tokens)
    assert steer.n_fired == 1


@pytest.mark.parametrize(("arch", "backend"), PARAMS)
def test_generate(arch: str, backend: str) -> None:
    with cell(arch, backend, "generate"):
        check_generate(get_model(arch, backend), arch)


def check_save_load(
    model: Any, arch: str, backend: str, tmp_path: Path, dtype: torch.dtype = torch.float32
) -> None:
    """LayerStates round-trips (bit for bit, in the model's dtype) with provenance."""
    adapter = sh.adapt(model)
    states = sh.extract_states(model, TEXTS, "all", tokens="all", pool="mean", progress=False)
    path = states.save(tmp_path / "states.safetensors")
    back = sh.LayerStates.load(path)
    assert torch.equal(back.states, states.states)
    assert back.layers == states.layers
    prov = back.provenance
    assert prov["model_type"] == adapter.model_type == ARCHS_MODEL_TYPE.get(arch, arch)
    assert prov["backend"] == backend and prov["hook_layout"] == adapter.hook_layout


@pytest.mark.parametrize(("arch", "backend"), PARAMS)
def test_save_load(arch: str, backend: str, tmp_path: Path) -> None:
    with cell(arch, backend, "save_load"):
        check_save_load(get_model(arch, backend), arch, backend, tmp_path)


ARCHS_MODEL_TYPE = {"neox": "gpt_neox", "gemma3": "gemma3_text"}
LOW_PRECISION = [
    pytest.param(a, b, d, id=f"{a}-{b}-{str(d).split('.')[-1]}")
    for b in BACKENDS
    for d in (torch.bfloat16, torch.float16)
    for a in ARCHS
]


def check_all(
    model: Any,
    arch: str,
    tmp_path: Path,
    dtype: torch.dtype = torch.float32,
    backend: str = "bridge",
) -> list[str]:
    """Every oracle of the float32 columns (sites .. save_load) on ``model`` (a low-precision
    bridge or HookedTransformer, or a dispatched bridge model, of ``backend``), states with
    left padding only (right padding is the float32 column's). An oracle that does not apply (``n/a`` in its own column, with its
    reason there) is skipped; returns those oracles' names."""
    skipped = []
    for name, check in (
        ("sites", lambda: check_sites(model, arch, dtype)),
        ("states", lambda: check_states(model, arch, dtype, sides=("left",))),
        ("readout", lambda: check_readout(model, arch, dtype)),
        ("steer/ablate/patch", lambda: check_interventions(model, arch, dtype)),
        ("lre_jacobian", lambda: check_lre_jacobian(model, arch, dtype)),
        ("kv_prefix", lambda: check_kv_prefix(model, arch, dtype)),
        ("generate", lambda: check_generate(model, arch, dtype)),
        ("save_load", lambda: check_save_load(model, arch, backend, tmp_path, dtype)),
    ):
        try:
            check()
        except NotApplicable:
            skipped.append(name)
    return skipped


@BOTH_CACHE_NAMES
@pytest.mark.parametrize(("arch", "backend", "dtype"), LOW_PRECISION)
def test_low_precision(arch: str, backend: str, dtype: torch.dtype, tmp_path: Path) -> None:
    """Every oracle with the model (and the reference) cast to ``dtype``; tolerances from
    ``tol(dtype)``, Jacobians in float32 (see ``check_lre_jacobian``)."""
    name = str(dtype).split(".")[-1]
    with cell(arch, backend, name):
        model = get_model(arch, backend, dtype)
        adapter = sh.adapt(model)
        assert adapter.dtype == dtype
        try:
            check_all(model, arch, tmp_path, dtype, backend)
        except NotImplementedError as exc:  # a known bridge defect, refused by name
            assert adapter.model_type in str(exc) and name in str(exc), exc
            raise Refused(f"refused by name ({str(exc).split(': ', 1)[1].split(';')[0]})") from exc


def _devices() -> list[str]:
    """Two CUDA devices when there are two; one GPU and the CPU; else CPU placement logic."""
    if DEVICE != "cpu" and torch.cuda.device_count() >= 2:
        return ["cuda:0", "cuda:1"]
    if DEVICE != "cpu":
        return ["cuda:0", "cpu"]
    return ["cpu", "cpu"]


@BOTH_CACHE_NAMES
@pytest.mark.parametrize("arch", list(ARCHS))
def test_device_map(arch: str, tmp_path: Path) -> None:
    with cell(arch, "bridge", "device_map"):
        pytest.importorskip("accelerate", reason="device_map needs accelerate (semhooks[demo])")
        get_model(arch, "bridge")  # n/a where this TransformerLens has no bridge for it
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
            model = tiny_model(
                arch, seed=SEED, n_layers=N_LAYERS, d_model=D_MODEL, device_map=_devices()
            )
        assert getattr(model.original_model, "hf_device_map", None)
        check_all(model, arch, tmp_path)


HOOKED_FEATURES = 10  # sites .. save_load, bfloat16, float16: test_device_map is bridge-only


def _support_table() -> Any:
    path = ROOT / "scripts" / "support_table.py"
    spec = importlib.util.spec_from_file_location("support_table", path)
    assert spec is not None and spec.loader is not None
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    return table


def test_committed_hooked_cells_are_this_runs() -> None:
    """``scripts/conformance_hooked.json`` (the README's HookedTransformer column) holds the
    hooked cells of this run, under the TransformerLens 3.x pinned in constraints-tl3.txt.

    Runs after every hooked cell (pytest keeps file order); skipped otherwise.
    """
    hooked = RESULTS.get("hooked", {})
    ran = sum(len(row) for row in hooked.values())
    if not hooked_transformer_available() or ran < len(ARCHS) * HOOKED_FEATURES:
        pytest.skip(f"only {ran} hooked cells ran under TransformerLens {tl_version()}")
    version = tl_version()
    if version != pinned_transformer_lens("constraints-tl3.txt"):
        pytest.skip(f"the committed hooked cells are from the pinned TL 3.x, not {version}")
    table = _support_table()
    assert table.load_hooked() == table.hooked_part(payload()), (
        "scripts/conformance_hooked.json is stale: run this file under TransformerLens 3.x "
        "with SEMHOOKS_CONFORMANCE_JSON=build/conformance-tl3.json, then python "
        "scripts/support_table.py --results build/conformance-tl3.json --update-hooked"
    )


def test_readme_support_table_is_this_runs_rendering() -> None:
    """README.md's support table equals the rendering of this run's bridge cells merged with
    the committed hooked cells (``scripts/conformance_hooked.json``; never hand-edited).

    Runs last (pytest keeps file order); skipped when only part of the suite ran, or under
    another TransformerLens than the pinned 4.x.
    """
    expected_cells = len(ARCHS) * len(FEATURES)
    got_cells = sum(len(row) for row in RESULTS.get("bridge", {}).values())
    if got_cells < expected_cells:
        pytest.skip(f"only {got_cells} of {expected_cells} bridge cells ran (use the whole file)")
    version = tl_version()
    if version != pinned_transformer_lens():
        pytest.skip(
            f"the README's table is rendered with the pinned TransformerLens, not {version}"
        )
    table = _support_table()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    want = table.render(table.merge(payload(), table.load_hooked()))
    assert table.current_block(readme) == want, (
        "README.md's support table is stale: run pytest tests/test_conformance.py, then "
        "python scripts/support_table.py"
    )
