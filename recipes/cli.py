"""The installed ``semhooks`` command: the library's commands plus ``list | run | show``.

:func:`main` is the console-script entry point: :func:`semhooks.cli.build_parser` extended
with the recipe commands (the library never imports :mod:`recipes`; the recipes build on it).

Exit codes: 0 success, 2 bad usage or config (one line naming the key and what was
expected), 1 the run failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _cmd_list(args: argparse.Namespace) -> int:
    from recipes.core import REGISTRY, load_plugins

    load_plugins()
    width = max(len(n) for n in REGISTRY)
    for name in sorted(REGISTRY):
        print(f"{name:<{width}}  {REGISTRY[name].description}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from recipes.config import ConfigError, build_config
    from recipes.core import get_recipe, run_recipe

    try:
        recipe = get_recipe(args.name)
        overrides = list(args.set or [])
        if args.model:
            overrides.append(f"model={args.model}")
        config = build_config(recipe.config_cls, args.config, overrides)
        out = Path(args.out or f"runs/{args.name}")
        doc = run_recipe(args.name, config, out)
    except ConfigError as exc:
        print(f"semhooks: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("semhooks: interrupted; cached artifacts are kept, re-run to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a clear one-line error, the traceback only on request
        if args.traceback:
            raise
        print(f"semhooks: {args.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {out}/metrics.json and {out}/report.md ({doc['seconds']} s)")
    _print_summary(doc)
    return 0


def _print_summary(doc: dict[str, Any]) -> None:
    summary = doc.get("metrics", {}).get("summary", {})
    for k, v in summary.items():
        print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")


def _cmd_show(args: argparse.Namespace) -> int:
    path = Path(args.dir) / "metrics.json"
    if not path.is_file():
        print(f"semhooks: no metrics.json in {args.dir}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
            raise ValueError("not a metrics document")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        detail = " ".join(str(exc).split())
        print(f"semhooks: {path} is not a readable metrics.json ({detail})", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{doc['recipe']} on {doc['config'].get('model')} ({doc['seconds']} s)")
    _print_summary(doc)
    return 0


def add_recipe_commands(sub: Any) -> None:
    p = sub.add_parser("list", help="list the available recipes")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("run", help="run a recipe and write metrics.json, plots and report.md")
    p.add_argument("name")
    p.add_argument("--model", help="model name (default: the recipe's, smollm2-135m)")
    p.add_argument("--config", help="a TOML, YAML or JSON config file")
    p.add_argument("--out", help="output folder (default runs/NAME)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--traceback", action="store_true", help="show the full traceback on failure")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("show", help="print the metrics of a finished run")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_show)


def build_parser() -> argparse.ArgumentParser:
    """The full ``semhooks`` parser: library commands and recipe commands."""
    from semhooks.cli import build_parser as library_parser

    return library_parser(extend=add_recipe_commands)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``semhooks`` command."""
    from semhooks.cli import main as run

    return run(argv, parser=build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
