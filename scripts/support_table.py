"""Render the architecture support table from the conformance suite's results.

The bridge columns come from a run under the pinned TransformerLens 4.x (``.venv``), the
HookedTransformer column from a run under TransformerLens 3.x (``.venv-tl3``), whose hooked
cells are kept in ``scripts/conformance_hooked.json`` (committed):

    # 1. TransformerLens 3.x: the hooked cells (only when the hooked backend changed)
    SEMHOOKS_CONFORMANCE_JSON=build/conformance-tl3.json \
        .venv-tl3/bin/python -m pytest -m backend tests/test_conformance.py
    python scripts/support_table.py --results build/conformance-tl3.json --update-hooked
    # 2. TransformerLens 4.x: the bridge cells, merged with the committed hooked cells
    .venv/bin/python -m pytest -m backend tests/test_conformance.py
    python scripts/support_table.py                   # rewrites README.md's marked block
    python scripts/support_table.py --check           # exit 1 when README.md differs

The README block between ``<!-- support-table:start -->`` and ``<!-- support-table:end -->``
is generated, never written by hand: ``tests/test_conformance.py`` checks that it equals the
rendering of the TransformerLens 4.x run merged with ``conformance_hooked.json``, and (under
the pinned TransformerLens 3.x) that ``conformance_hooked.json`` holds that run's cells.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOOKED_RESULTS = ROOT / "scripts" / "conformance_hooked.json"
START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"
COLUMNS = [
    "sites",
    "states",
    "readout",
    "steer/ablate/patch",
    "lre_jacobian",
    "kv_prefix",
    "generate",
    "save_load",
    "bfloat16",
    "float16",
    "device_map",
]


def _mark(value: str | None) -> tuple[str, str | None]:
    """A short cell and its footnote text (None: no footnote)."""
    if value is None:
        return "not run", None
    if value == "pass":
        return "pass", None
    if value.startswith("pass ("):
        return "pass", value[len("pass (") : -1]
    if value.startswith("n/a: "):
        return "n/a", value[len("n/a: ") :]
    if value.startswith("skipped: "):
        return "not run", value[len("skipped: ") :]
    if value.startswith("fails: "):
        return "**fails**", value[len("fails: ") :]
    return value, None


def hooked_part(payload: dict[str, Any]) -> dict[str, Any]:
    """What ``conformance_hooked.json`` keeps of a TransformerLens 3.x run."""
    return {
        "transformer_lens": payload["transformer_lens"],
        "results": {"hooked": payload["results"].get("hooked", {})},
    }


def merge(payload: dict[str, Any], hooked: dict[str, Any]) -> dict[str, Any]:
    """``payload`` (a TransformerLens 4.x run) with the hooked cells of ``hooked`` (a
    TransformerLens 3.x run, as :func:`hooked_part` keeps it)."""
    return {
        **payload,
        "hooked_transformer_lens": hooked["transformer_lens"],
        "results": {**payload["results"], "hooked": hooked["results"]["hooked"]},
    }


def load_hooked(path: Path = HOOKED_RESULTS) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def hooked_summary(row: dict[str, str]) -> str | None:
    """One cell for an architecture's hooked features: the failures if any; the shared
    value when every feature has the same one (``n/a: reason``, ``skipped: ...``); else
    ``pass``, noting the features that did not pass."""
    if not row:
        return None
    fails = [f"{k}: {v[len('fails: ') :]}" for k, v in row.items() if v.startswith("fails: ")]
    if fails:
        return "fails: " + "; ".join(fails)
    values = set(row.values())
    if len(values) == 1 and not next(iter(values)).startswith("pass"):
        return next(iter(values))
    other = [f"{k} {v}" for k, v in row.items() if not v.startswith("pass")]
    return f"pass ({'; '.join(other)})" if other else "pass"


def render(payload: dict[str, Any]) -> str:
    """The Markdown block (without the markers) for one results payload."""
    results = payload["results"]
    bridge = results.get("bridge", {})
    hooked = results.get("hooked", {})
    archs = list(payload["archs"])
    notes: list[str] = []

    def cell(value: str | None) -> str:
        text, note = _mark(value)
        if note is None:
            return text
        if note not in notes:
            notes.append(note)
        return f"{text} [{notes.index(note) + 1}]"

    header = ["architecture", "traits", *COLUMNS, "HookedTransformer"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for arch in archs:
        row = bridge.get(arch, {})
        hooked_row = hooked.get(arch, {})
        hooked_cell = cell(hooked_summary(hooked_row))
        traits = ", ".join(payload["archs"][arch])
        cells = [cell(row.get(c)) for c in COLUMNS]
        lines.append("| " + " | ".join([f"`{arch}`", traits, *cells, hooked_cell]) + " |")
    hooked_tl = payload.get("hooked_transformer_lens")
    versions = (
        f"TransformerLens {payload['transformer_lens']}"
        if hooked_tl is None
        else f"TransformerLens {payload['transformer_lens']} bridge, {hooked_tl} HookedTransformer"
    )
    out = [
        f"Generated by `python scripts/support_table.py` from `tests/test_conformance.py` "
        f"({versions}; tiny random models, "
        "`semhooks.testing.tiny_model(arch)`). Columns:",
        "",
    ]
    out += [f"- **{c}**: {payload['features'][c]}" for c in COLUMNS]
    out += [
        "- **HookedTransformer**: the columns sites to save_load, bfloat16 and float16 with "
        '`backend="hooked"` '
        "(`semhooks.hooked_transformer_from_hf`, TransformerLens 3.x; pass where all pass, "
        "else the failing columns, or the reason it does not apply).",
        "",
        *lines,
        "",
    ]
    out += [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(out)


def replace_block(readme: str, block: str) -> str:
    if START not in readme or END not in readme:
        raise ValueError(f"README.md has no {START} ... {END} block")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def current_block(readme: str) -> str:
    return readme.split(START, 1)[1].split(END, 1)[0].strip("\n")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (a reader never sees half)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "build" / "conformance.json"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if stale")
    parser.add_argument(
        "--hooked",
        default=str(HOOKED_RESULTS),
        help="the TransformerLens 3.x run's hooked cells (merged into the table)",
    )
    parser.add_argument(
        "--update-hooked",
        action="store_true",
        help="store the hooked cells of --results (a TransformerLens 3.x run) in --hooked",
    )
    args = parser.parse_args(argv)
    payload = json.loads(Path(args.results).read_text(encoding="utf-8"))
    if args.update_hooked:
        cells = [v for row in payload["results"].get("hooked", {}).values() for v in row.values()]
        if not cells or all(v.startswith("skipped") for v in cells):
            print(f"{args.results} has no hooked cells (run it under TransformerLens 3.x)")
            return 1
        out = Path(args.hooked)
        write_atomic(out, json.dumps(hooked_part(payload), indent=1) + "\n")
        print(f"wrote the hooked cells of {args.results} to {out}")
        return 0
    payload = merge(payload, load_hooked(Path(args.hooked)))
    readme_path = Path(args.readme)
    readme = readme_path.read_text(encoding="utf-8")
    block = render(payload)
    if args.check:
        if current_block(readme) != block:
            print("README.md's support table is stale: run python scripts/support_table.py")
            return 1
        return 0
    write_atomic(readme_path, replace_block(readme, block))
    print(f"wrote the support table ({len(payload['archs'])} architectures) to {readme_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
