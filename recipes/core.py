"""Recipe machinery: typed configs, a registry, the run folder with resumable artifacts, reports.

A recipe is a config dataclass plus a function ``run(config, ctx) -> metrics``. The config
is validated twice: against its field types when it is built (from defaults, a TOML/YAML
file and ``--set key=value`` overrides), and against the model by ``check(config, ctx)``
before any forward pass (layers exist, hook names resolve, label words tokenise).

Every run writes to one folder: ``metrics.json`` (metrics, config, provenance), PNG plots,
``report.md`` embedding them, and ``artifacts/`` with cached intermediate results
(LayerStates, LREs, bases...). Artifacts are written atomically, so a re-run resumes from
what exists and an interrupted run leaves nothing corrupt.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semhooks.io.artifacts import atomic_write_json, atomic_write_text, now_iso
from semhooks.io.jsonable import to_jsonable


class ConfigError(ValueError):
    """A recipe config is invalid (unknown key, wrong type, or does not fit the model)."""


@dataclass
class RecipeConfig:
    """Fields every recipe has."""

    model: str = "smollm2-135m"
    seed: int = 0
    progress: bool = True


@dataclass
class Recipe:
    name: str
    description: str
    config_cls: type[RecipeConfig]
    run: Callable[[Any, RunContext], dict[str, Any]]
    check: Callable[[Any, RunContext], None] | None = None


REGISTRY: dict[str, Recipe] = {}


def register(
    name: str,
    config_cls: type[RecipeConfig],
    *,
    description: str = "",
    check: Callable[[Any, RunContext], None] | None = None,
) -> Callable[
    [Callable[[Any, RunContext], dict[str, Any]]], Callable[[Any, RunContext], dict[str, Any]]
]:
    """Decorator: register ``fn(config, ctx) -> metrics`` as the recipe ``name``."""

    def wrap(
        fn: Callable[[Any, RunContext], dict[str, Any]],
    ) -> Callable[[Any, RunContext], dict[str, Any]]:
        doc = description or (fn.__doc__ or name).strip().splitlines()[0]
        REGISTRY[name] = Recipe(name, doc, config_cls, fn, check)
        return fn

    return wrap


def get_recipe(name: str) -> Recipe:
    load_plugins()
    if name not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown recipe {name!r}; available: {', '.join(sorted(REGISTRY))}.{hint}"
        )
    return REGISTRY[name]


_PLUGINS_LOADED = False


def load_plugins() -> None:
    """Import built-in recipes and any registered through the ``semhooks.recipes`` entry point
    group or the ``SEMHOOKS_RECIPES`` environment variable (comma-separated module names or
    ``.py`` paths)."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    import importlib
    import importlib.metadata
    import importlib.util

    importlib.import_module("recipes.builtin")
    for ep in importlib.metadata.entry_points(group="semhooks.recipes"):
        ep.load()
    for item in filter(None, os.environ.get("SEMHOOKS_RECIPES", "").split(",")):
        if item.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(item).stem, item)
            if spec is None or spec.loader is None:
                raise ConfigError(f"cannot import recipe plugin {item}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            importlib.import_module(item)


# ---------------------------------------------------------------------- config building
def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` (often a string from --set) to ``annotation`` or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {annotation}, got {value!r}")
    if origin is typing.Literal:
        for allowed in args:
            if value == allowed or (isinstance(value, str) and str(allowed) == value):
                return allowed
        raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
    if origin in (list, tuple):
        items = value
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    items = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ConfigError(
                        f"{key}: not a valid JSON list ({exc.msg} at character {exc.pos}): "
                        f"{value!r}"
                    ) from None
            else:
                items = [v for v in text.split(",") if v.strip()]
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def build_config(
    cls: type[RecipeConfig],
    file: str | os.PathLike[str] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> RecipeConfig:
    """Defaults, then a TOML/YAML/JSON file, then ``key=value`` overrides; all type-checked."""
    values: dict[str, Any] = {}
    if file is not None:
        values.update(_read_config_file(Path(file)))
    if isinstance(overrides, dict):
        values.update(overrides)
    else:
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected key=value")
            k, v = item.split("=", 1)
            values[k.strip()] = v
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}"
        )
    kwargs = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
    config = cls(**kwargs)
    validate_config(config)
    return config


def _read_config_file(path: Path) -> dict[str, Any]:
    """The key/value table of a TOML, YAML or JSON config file; any problem is one line."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"config file {path}: use .toml, .yaml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            doc: Any = tomllib.loads(text)
        elif path.suffix == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
            doc = {} if doc is None else doc
    except Exception as exc:  # tomllib, json and yaml each raise their own syntax error
        detail = " ".join(str(exc).split())
        raise ConfigError(f"config file {path}: syntax error: {detail}") from None
    if not isinstance(doc, dict):
        raise ConfigError(
            f"config file {path} must hold a table of key = value settings, got a "
            f"{type(doc).__name__}"
        )
    return doc


def validate_config(config: Any) -> None:
    """Value checks that need no model, declared on the config's fields: a list may not be
    empty (unless ``metadata={"allow_empty": True}``); ``metadata={"min": m}`` bounds a
    number, ``{"min_len": m}`` a list's length. Raises ConfigError naming the key."""
    for f in dataclasses.fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if isinstance(value, (list, tuple)):
            if not value and not meta.get("allow_empty"):
                raise ConfigError(f"{f.name}: empty list; give at least one value")
            if len(value) < meta.get("min_len", 0):
                raise ConfigError(
                    f"{f.name}: needs at least {meta['min_len']} values, got {len(value)}"
                )
        low = meta.get("min")
        if (
            low is not None
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value < low
        ):
            raise ConfigError(f"{f.name}: must be >= {low}, got {value!r}")


def config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


# ---------------------------------------------------------------------- reporting helpers
@dataclass(frozen=True)
class Definition:
    """One entry of a report's definitions section (see :meth:`RunContext.define`)."""

    term: str
    text: str
    pattern: str

    def matches(self, text: str) -> bool:
        return re.search(self.pattern, text) is not None


#: Definitions every report may need; recipes add their own with ``ctx.define``.
COMMON_DEFINITIONS = (
    Definition(
        "accuracy",
        "fraction of evaluation items predicted correctly, shown with n (the evaluation "
        "items) and its 95% interval",
        r"accuracy",
    ),
    Definition(
        "95% CI",
        "Wilson score interval for a binomial proportion (the value times n successes out "
        "of n); it covers sampling noise of the evaluation items only, not seeds or layer "
        "choice",
        r"_ci95$|95% CI",
    ),
    Definition("n", "number of evaluation items behind a proportion", r"_n$|n_test|\bn="),
    Definition("seconds", "wall-clock seconds measured in this run", r"(^|[._])seconds"),
)


def ci95(value: float, n: int) -> list[float]:
    """95% Wilson interval ``[low, high]`` of a proportion ``value`` measured on ``n`` items
    (``value * n`` is rounded to the nearest count of successes)."""
    from semhooks.studies.probing import wilson_interval

    n = int(n)
    successes = min(n, max(0, round(float(value) * n)))
    low, high = wilson_interval(successes, n)
    return [low, high]


def add_proportion(summary: dict[str, Any], key: str, value: float, n: int) -> None:
    """``summary[key] = value`` with ``key_n`` and ``key_ci95`` beside it (rendered as one
    cell: ``0.725 (n=80, 95% CI [0.62, 0.81])``)."""
    summary[key] = float(value)
    summary[f"{key}_n"] = int(n)
    summary[f"{key}_ci95"] = ci95(value, n) if n > 0 and math.isfinite(value) else None


def _load_model(name: str, key: str) -> Any:
    """``load_model(name)``; a name that cannot be loaded is a config error (one line)."""
    import semhooks as sh

    try:
        return sh.load_model(name)
    except OSError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        first = first.split(" Original error:")[0]
        if repr(name) not in first:
            first = f"cannot load {name!r}: {first}"
        raise ConfigError(f"{key}: {first}") from exc


# ---------------------------------------------------------------------- run context
@dataclass
class RunContext:
    """What a recipe gets: the run folder, the model (loaded once, lazily), caches, figures."""

    out: Path
    config: Any
    progress: bool = True
    _model: Any = None
    figures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    _model_key: dict[str, Any] | None = field(default=None, repr=False)
    definitions: list[Definition] = field(default_factory=list)

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = _load_model(self.config.model, "model")
        return self._model

    def load_other(self, name: str) -> Any:
        return _load_model(name, "model name")

    def define(self, term: str, text: str, pattern: str | None = None) -> None:
        """Define a metric or table column for the report's definitions section.

        The definition is printed when ``pattern`` (a regular expression, default the term
        itself) occurs in a summary key, a table or a note of the run; a recipe defines every
        metric it can report, and the report keeps those it did.
        """
        if not any(d.term == term for d in self.definitions):
            self.definitions.append(Definition(term, text, pattern or re.escape(term)))

    @property
    def artifacts(self) -> Path:
        path = self.out / "artifacts"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def cache_key(self, name: str) -> dict[str, Any]:
        """Everything that decides artifact ``name``: the recipe (its config class), the
        whole config (but ``progress``), the model's fingerprint (name, weights, tokenizer)
        and the semhooks version. A cached artifact is reused only under the same key."""
        from semhooks.io.artifacts import semhooks_version
        from semhooks.io.fingerprint import model_fingerprint

        if self._model_key is None:
            self._model_key = model_fingerprint(self.model)
        cls = type(self.config)
        config = {k: v for k, v in config_dict(self.config).items() if k != "progress"}
        return {
            "artifact": name,
            "recipe_config": f"{cls.__module__}.{cls.__qualname__}",
            "config": config,
            "model": self._model_key,
            "semhooks_version": semhooks_version(),
        }

    def cached(
        self,
        name: str,
        compute: Callable[[], Any],
        save: Callable[[Any, Path], Any],
        load: Callable[[Path], Any],
        suffix: str = ".safetensors",
    ) -> Any:
        """Artifact ``name``: loaded from the run folder when it was made under the same
        :meth:`cache_key`, else computed and saved (replacing a stale one).

        ``artifacts/NAME.key.json`` records the key and the artifact file's sha256; it is
        removed before an artifact is replaced and written after, so a run killed in
        between leaves no key (recompute), never a key beside another run's artifact.
        """
        from semhooks.io.artifacts import ArtifactError
        from semhooks.io.fingerprint import content_sha256, file_sha256

        path = self.artifacts / f"{name}{suffix}"
        key_path = self.artifacts / f"{name}.key.json"
        key = content_sha256(self.cache_key(name))
        if path.is_file() and key_path.is_file():
            try:
                stored = json.loads(key_path.read_text())
                if stored["key_sha256"] == key and stored["artifact_sha256"] == file_sha256(path):
                    value = load(path)
                    self.resumed.append(name)
                    return value
            except (OSError, ValueError, KeyError, TypeError, ArtifactError):
                pass  # a damaged key or artifact: recompute it
        key_path.unlink(missing_ok=True)
        value = compute()
        save(value, path)
        atomic_write_json(key_path, {"key_sha256": key, "artifact_sha256": file_sha256(path)})
        return value

    def cached_states(self, name: str, compute: Callable[[], Any]) -> Any:
        """A LayerStates artifact (see :meth:`cached`)."""
        from semhooks.extraction.states import LayerStates

        return self.cached(name, compute, lambda v, p: v.save(p), LayerStates.load)

    def cached_json(self, name: str, compute: Callable[[], Any]) -> Any:
        """A JSON artifact (see :meth:`cached`)."""
        return self.cached(
            name,
            compute,
            lambda value, p: atomic_write_json(p, value),
            lambda p: json.loads(p.read_text(encoding="utf-8")),
            suffix=".json",
        )

    def save_figure(self, name: str, fig: Any, caption: str = "") -> str:
        import matplotlib.pyplot as plt

        path = self.out / f"{name}.png"
        tmp = self.out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
        plt.close(fig)
        self.figures.append((path.name, caption))
        return path.name


def run_recipe(
    name: str,
    config: Any,
    out: str | os.PathLike[str],
    *,
    model: Any = None,
) -> dict[str, Any]:
    """Check, run, and write ``metrics.json`` + ``report.md`` for one recipe.

    The config is checked against the model before the output folder is created, so a
    failed check leaves nothing behind. Every warning raised while the recipe runs is
    recorded, written into ``metrics.json`` and the report, and then re-emitted (once per
    distinct message) so the caller's warning filters still apply.
    """
    import semhooks as sh

    recipe = get_recipe(name)
    if not isinstance(config, recipe.config_cls):
        raise ConfigError(
            f"recipe {name} needs a {recipe.config_cls.__name__}, got {type(config).__name__}"
        )
    validate_config(config)
    out_dir = Path(out)
    ctx = RunContext(out_dir, config, progress=getattr(config, "progress", True), _model=model)
    t0 = time.perf_counter()
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if recipe.check is not None:
                recipe.check(config, ctx)
            t_checked = time.perf_counter()
            out_dir.mkdir(parents=True, exist_ok=True)
            metrics = recipe.run(config, ctx)
    except BaseException:
        _reemit(_distinct_warnings(caught), quiet=True)
        raise
    t_done = time.perf_counter()
    recorded = _distinct_warnings(caught)
    provenance: dict[str, Any] = {"date": now_iso(), "semhooks_version": sh.__version__}
    if ctx._model is not None:
        provenance.update(sh.adapt(ctx._model).provenance())
    doc = {
        "recipe": name,
        "config": config_dict(config),
        "provenance": provenance,
        "seconds": round(t_done - t0, 2),
        "seconds_detail": {
            "check_and_model_load": round(t_checked - t0, 2),
            "recipe": round(t_done - t_checked, 2),
        },
        "resumed_artifacts": ctx.resumed,
        "warnings": [{k: v for k, v in w.items() if k != "raw"} for w in recorded],
        "metrics": to_jsonable(metrics, unknown="keep"),
    }
    atomic_write_json(out_dir / "metrics.json", doc)
    atomic_write_text(out_dir / "report.md", render_report(recipe, doc, ctx))
    _reemit(recorded)
    return doc


def _distinct_warnings(caught: list[warnings.WarningMessage]) -> list[dict[str, Any]]:
    """One entry per distinct (category, message), in order of first appearance."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for w in caught:
        key = (w.category.__name__, str(w.message))
        if key in seen:
            seen[key]["count"] += 1
            continue
        where = Path(w.filename)
        short = "/".join(where.parts[-2:]) if len(where.parts) >= 2 else where.name
        seen[key] = {
            "category": w.category.__name__,
            "message": str(w.message),
            "source": f"{short}:{w.lineno}",
            "count": 1,
            "raw": w,
        }
    return list(seen.values())


def _reemit(recorded: list[dict[str, Any]], *, quiet: bool = False) -> None:
    """Hand recorded warnings back to the caller's filters (``quiet``: while an exception is
    already on its way out, a warning turned into an error must not replace it)."""
    for entry in recorded:
        w = entry["raw"]
        try:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        except Warning:
            if not quiet:
                raise


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _summary_rows(summary: dict[str, Any]) -> list[str]:
    """Table rows; a proportion's ``_n`` and ``_ci95`` siblings go into its own cell."""
    rows = []
    for k, v in summary.items():
        base = re.sub(r"_(n|ci95)$", "", k)
        if base != k and base in summary and f"{base}_n" in summary:
            continue
        cell = _fmt(v)
        if f"{k}_n" in summary and f"{k}_ci95" in summary:
            ci = summary[f"{k}_ci95"]
            interval = f", 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            cell = f"{_fmt(v)} (n={summary[f'{k}_n']}{interval})"
        rows.append(f"| {k} | {cell} |")
    return rows


def report_definitions(
    summary: dict[str, Any], texts: list[str], definitions: list[Definition]
) -> list[Definition]:
    """The definitions whose pattern occurs in a summary key or in one of ``texts``."""
    keys = list(summary)
    out: list[Definition] = []
    for d in [*definitions, *COMMON_DEFINITIONS]:
        if any(d.matches(k) for k in keys) or any(d.matches(t) for t in texts):
            if all(o.term != d.term for o in out):
                out.append(d)
    return out


def undefined_metrics(summary: dict[str, Any], definitions: list[Definition]) -> list[str]:
    """Summary keys that no definition covers (a report must have none)."""
    every = [*definitions, *COMMON_DEFINITIONS]
    return [k for k in summary if not any(d.matches(k) for d in every)]


def render_report(recipe: Recipe, doc: dict[str, Any], ctx: RunContext) -> str:
    prov = doc["provenance"]
    metrics = doc["metrics"] if isinstance(doc["metrics"], dict) else {}
    detail = doc.get("seconds_detail") or {}
    lines = [f"# {recipe.name}", "", recipe.description, ""]
    lines += [
        f"Model `{prov.get('model', doc['config'].get('model'))}` "
        f"({prov.get('backend', '?')}, TransformerLens {prov.get('transformer_lens_version', '?')}), "
        f"semhooks {prov.get('semhooks_version')}, {prov.get('date')}.",
        "",
    ]
    timing = f"Measured run time: {doc['seconds']} s"
    if detail:
        timing += (
            f" ({detail.get('check_and_model_load')} s config check and model load, "
            f"{detail.get('recipe')} s recipe)"
        )
    lines += [timing + ".", ""]
    recorded = doc.get("warnings") or []
    if recorded:
        lines += [
            f"**{len(recorded)} distinct warning(s) were raised during this run; see "
            "[Warnings](#warnings-raised-during-the-run).**",
            "",
        ]
    if doc["resumed_artifacts"]:
        lines += [f"Resumed from cached artifacts: {', '.join(doc['resumed_artifacts'])}.", ""]
    summary = metrics.get("summary")
    summary = summary if isinstance(summary, dict) else {}
    if summary:
        lines += ["| metric | value |", "|---|---|", *_summary_rows(summary), ""]
    tables = list(metrics.get("tables", []))
    for table in tables:
        lines += [table, ""]
    for note in ctx.notes:
        lines += [note, ""]
    for fname, caption in ctx.figures:
        lines += [f"![{caption or fname}]({fname})", ""]
        if caption:
            lines += [f"*{caption}*", ""]
    found = report_definitions(summary, [*tables, *ctx.notes], ctx.definitions)
    undefined = undefined_metrics(summary, ctx.definitions)
    if found or undefined:
        lines += ["## Definitions", ""]
        lines += [f"- `{d.term}`: {d.text}." for d in found]
        lines += [f"- `{k}`: no definition given by the recipe." for k in undefined]
        lines.append("")
    lines += ["## Warnings raised during the run", ""]
    if recorded:
        for w in recorded:
            times = f", {w['count']} times" if w["count"] > 1 else ""
            lines.append(f"- `{w['category']}` ({w['source']}{times}): {w['message']}")
    else:
        lines.append("None.")
    lines.append("")
    lines += ["## Config", "", "```json", json.dumps(doc["config"], indent=2), "```", ""]
    return "\n".join(lines)
