"""GPU check in one command: the architecture conformance suite and the extraction / LRC
benchmarks on a CUDA device.

    python benchmarks/gpu_conformance.py            # conformance on cuda + benchmarks
    python benchmarks/gpu_conformance.py --quick    # smaller benchmark sizes
    python benchmarks/gpu_conformance.py --skip-benchmarks

Without a CUDA device it prints one line and exits 0 (skipped cleanly), so CI on CPU can
call it. Steps:

1. ``pytest tests/test_conformance.py`` with ``SEMHOOKS_CONFORMANCE_DEVICE=cuda`` (every
   tiny architecture on the GPU, in float32, bfloat16 and float16; ``device_map`` over
   ``cuda:0``/``cuda:1`` when there are two GPUs, else ``cuda:0``/``cpu``); the cell results
   go to ``build/conformance_cuda.json`` (render them with
   ``python scripts/support_table.py --results build/conformance_cuda.json --readme X``).
2. Extraction: ``extract_states`` (all layers, mean pooling) against a bare forward pass on
   the same batches, texts per second and the ratio (target: <= 1.10 x the bare forward).
3. LRC: the exact LRE Jacobian (prefix cache, early stop, batched VJPs) against the naive
   ``torch.autograd.functional.jacobian`` reference on the same prompts: seconds each and the
   relative Frobenius error (target: < 1e-4).

Steps 2 and 3 use SmolLM2-135M when it is installed (``semhooks.load_model``), else a tiny
random Llama; the model used is printed. Results: ``build/gpu_benchmarks.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the river bank money capital city France Paris music movie layer token state".split()


def _sync() -> None:
    torch.cuda.synchronize()


def _model(quick: bool) -> tuple[Any, str]:
    import semhooks as sh

    if not quick:
        try:
            return sh.load_model("smollm2-135m", device="cuda"), "smollm2-135m"
        except (ModuleNotFoundError, OSError, ValueError) as exc:
            print(f"SmolLM2 not available ({type(exc).__name__}: {exc}); using a tiny Llama")
    from semhooks.testing import tiny_model

    return tiny_model("llama", n_layers=4, d_model=64).to("cuda"), "tiny-llama"


def bench_extraction(model: Any, n_texts: int, batch_size: int) -> dict[str, float]:
    import semhooks as sh

    adapter = sh.adapt(model)
    texts = [
        " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(20 + i % 9)) for i in range(n_texts)
    ]
    sh.extract_states(model, texts[:batch_size], progress=False)  # warm-up
    _sync()
    t0 = time.perf_counter()
    sh.extract_states(
        model, texts, "all", tokens="all", pool="mean", batch_size=batch_size, progress=False
    )
    _sync()
    t_extract = time.perf_counter() - t0
    batches = [texts[i : i + batch_size] for i in range(0, n_texts, batch_size)]
    t0 = time.perf_counter()
    for chunk in batches:
        adapter.forward(adapter.tokenize(chunk), return_logits=False)
    _sync()
    t_bare = time.perf_counter() - t0
    return {
        "n_texts": n_texts,
        "extract_s": t_extract,
        "bare_forward_s": t_bare,
        "ratio": t_extract / t_bare,
        "texts_per_s": n_texts / t_extract,
    }


def bench_lrc(model: Any, n_prompts: int) -> dict[str, float]:
    import semhooks as sh
    from semhooks.relations import RelationPrompt, prompt_jacobian, reference_jacobian

    adapter = sh.adapt(model)
    subjects = ["France", "Germany", "Italy", "Spain", "Paris", "Berlin", "Rome", "Madrid"]
    prompts = [
        RelationPrompt(text=f"The capital of {s} is", subject=s, object="x")
        for s in subjects[:n_prompts]
    ]
    ls, lo = adapter.n_layers // 2, adapter.n_layers - 1
    prompt_jacobian(model, prompts[0], ls, lo)  # warm-up (and the prefix-cache check)
    fast = ref = 0.0
    errors = []
    for p in prompts:
        _sync()
        t0 = time.perf_counter()
        J, _, _ = prompt_jacobian(model, p, ls, lo)
        _sync()
        fast += time.perf_counter() - t0
        t0 = time.perf_counter()
        J_ref, _, _ = reference_jacobian(model, p, ls, lo)
        _sync()
        ref += time.perf_counter() - t0
        J, J_ref = J.double().cpu(), J_ref.double().cpu()
        errors.append(float((J - J_ref).norm() / J_ref.norm()))
    return {
        "n_prompts": len(prompts),
        "exact_s": fast,
        "reference_s": ref,
        "speedup": ref / fast,
        "max_rel_error": max(errors),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and the tiny model")
    ap.add_argument("--skip-conformance", action="store_true")
    ap.add_argument("--skip-benchmarks", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "build"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: GPU conformance and benchmarks skipped")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})")
    status = 0
    if not args.skip_conformance:
        env = {
            **os.environ,
            "SEMHOOKS_CONFORMANCE_DEVICE": "cuda",
            "SEMHOOKS_CONFORMANCE_JSON": str(out / "conformance_cuda.json"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        cmd += [str(ROOT / "tests" / "test_conformance.py")]
        t0 = time.perf_counter()
        status = subprocess.run(cmd, env=env, cwd=ROOT, check=False).returncode
        print(f"conformance on cuda: exit {status} in {time.perf_counter() - t0:.1f} s")
    if not args.skip_benchmarks:
        model, name = _model(args.quick)
        n_texts, n_prompts = (64, 2) if args.quick else (512, 8)
        results = {
            "model": name,
            "device": torch.cuda.get_device_name(0),
            "extraction": bench_extraction(model, n_texts, 16),
            "lrc_jacobian": bench_lrc(model, n_prompts),
        }
        print(json.dumps(results, indent=1))
        (out / "gpu_benchmarks.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return status


if __name__ == "__main__":
    sys.exit(main())
