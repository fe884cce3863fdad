"""The ``semhooks`` command.

``semhooks summary``  per-layer summary of a model's states (norms, anisotropy, logit lens).
``semhooks cache``    show or clear semhooks' cache folder.

The installed ``semhooks`` command is :func:`recipes.cli.main`: these commands plus the
recipe commands ``list``, ``run`` and ``show``. This module never imports :mod:`recipes`
(the library sits below its recipes); ``python -m semhooks.cli`` runs the library's
commands alone.

Exit codes: 0 success, 2 bad usage (including a model that cannot be loaded), 1 a failed
run, 130 interrupted; output cut short by a closed pipe (``semhooks show DIR --json | head``)
ends quietly with 141, as a program killed by SIGPIPE does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

SUMMARY_TEXTS = [
    "The capital of France is",
    "Bat, Rabbit, Ant, Fox,",
    "I loved this movie; it was wonderful.",
    "The bank of the river was muddy after the storm.",
    "She plays the violin in an orchestra.",
    "Water boils at one hundred degrees.",
]


def layer_summary(model_name: str, texts: Sequence[str] = SUMMARY_TEXTS) -> list[dict[str, object]]:
    """Per layer: mean last-token norm, mean pairwise cosine, logit-lens top token of text 0."""
    import semhooks as sh

    model = sh.load_model(model_name)
    a = sh.adapt(model)
    states = sh.extract_states(model, list(texts), tokens="last", pool="last", progress=False)
    rows = []
    for layer in states.layers:
        x = states.layer(layer)
        unit = torch.nn.functional.normalize(x, dim=-1)
        cos = unit @ unit.T
        n = len(texts)
        mean_cos = float((cos.sum() - n) / (n * (n - 1)))
        row: dict[str, object] = {
            "layer": layer,
            "norm": float(x.norm(dim=-1).mean()),
            "mean_cos": mean_cos,
        }
        if not a.is_encoder:
            with torch.no_grad():
                top = a.unembed(x[:1]).argmax(-1)
            row["lens_top"] = a.tokenizer.decode(top)
        rows.append(row)
    return rows


def _cmd_summary(args: argparse.Namespace) -> int:
    rows = layer_summary(args.model)
    print(f"Per-layer summary of {args.model} (last token of {len(SUMMARY_TEXTS)} texts)")
    print(f"{'layer':>5} {'mean |h|':>10} {'mean cos':>9}  logit lens of {SUMMARY_TEXTS[0]!r}")
    for r in rows:
        print(
            f"{r['layer']:>5} {r['norm']:>10.2f} {r['mean_cos']:>9.3f}  {r.get('lens_top', '')!r}"
        )
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from semhooks.backend.adapter import cache_dir, cache_report, clear_cache

    if args.action == "clear":
        freed = clear_cache()
        print(f"removed {cache_dir()} ({freed / 1e6:.0f} MB)")
        return 0
    rows = cache_report()
    print(f"semhooks cache: {cache_dir()} (set SEMHOOKS_CACHE to move it)")
    for name, size in rows:
        print(f"  {size / 1e6:>8.1f} MB  {name}")
    print(f"  {sum(s for _, s in rows) / 1e6:>8.1f} MB  in all")
    return 0


SUMMARY_DESCRIPTION = f"""\
Load a model and print one line per layer for the last token of {len(SUMMARY_TEXTS)} short
built-in texts: the mean norm of the residual state (blocks.L.hook_resid_post), the mean
pairwise cosine between the texts' states (anisotropy: near 1 means every state points the
same way), and, for decoders, the logit-lens top token of the first text
({SUMMARY_TEXTS[0]!r}) read through the final norm and unembedding. A quick check that a
model loads and that its layers look sane before running a recipe."""


def build_parser(
    extend: Callable[[Any], None] | None = None,
) -> argparse.ArgumentParser:
    """The command-line parser; ``extend(subparsers)`` adds more commands (the recipes')."""
    parser = argparse.ArgumentParser(
        prog="semhooks",
        description=__doc__.splitlines()[0],
        epilog="Run 'semhooks COMMAND --help' for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "summary",
        help="per-layer summary of a model's states: norms, anisotropy, logit lens",
        description=SUMMARY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="smollm2-135m (default), minilm-l6, tiny-llama, tiny-gpt2, tiny-bert, or a "
        "Hugging Face model name in the local cache",
    )
    p.set_defaults(func=_cmd_summary)
    p = sub.add_parser(
        "cache", help="show or clear semhooks' cache (dequantised weights, bases, verdicts)"
    )
    p.add_argument("action", choices=["info", "clear"], nargs="?", default="info")
    p.set_defaults(func=_cmd_cache)
    if extend is not None:
        extend(sub)
    return parser


EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141


def main(
    argv: Sequence[str] | None = None, *, parser: argparse.ArgumentParser | None = None
) -> int:
    """Run one command; ``parser`` defaults to :func:`build_parser` (the library's commands)."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # a model that cannot be loaded: one line, not the hub's traceback
        if getattr(args, "command", None) != "summary":
            raise
        first = (str(exc).splitlines() or [type(exc).__name__])[0].split(" Original error:")[0]
        print(f"semhooks: {first}", file=sys.stderr)
        return EXIT_USAGE


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass


if __name__ == "__main__":
    raise SystemExit(main())
