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
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semhooks.artifacts import atomic_write_json, atomic_write_text, now_iso


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
                items = json.loads(text)
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
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            values.update(tomllib.loads(text))
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            values.update(yaml.safe_load(text) or {})
        elif path.suffix == ".json":
            values.update(json.loads(text))
        else:
            raise ConfigError(f"config file {path}: use .toml, .yaml or .json")
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
    return cls(**kwargs)


def config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


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

    @property
    def model(self) -> Any:
        if self._model is None:
            import semhooks as sh

            self._model = sh.load_model(self.config.model)
        return self._model

    def load_other(self, name: str) -> Any:
        import semhooks as sh

        return sh.load_model(name)

    @property
    def artifacts(self) -> Path:
        path = self.out / "artifacts"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def cached_states(self, name: str, compute: Callable[[], Any]) -> Any:
        """A LayerStates artifact: loaded from the run folder if present, else computed + saved."""
        from semhooks.states import LayerStates

        path = self.artifacts / f"{name}.safetensors"
        if path.is_file():
            self.resumed.append(name)
            return LayerStates.load(path)
        states = compute()
        states.save(path)
        return states

    def cached_json(self, name: str, compute: Callable[[], Any]) -> Any:
        path = self.artifacts / f"{name}.json"
        if path.is_file():
            self.resumed.append(name)
            return json.loads(path.read_text())
        value = compute()
        atomic_write_json(path, value)
        return value

    def cached(
        self,
        name: str,
        compute: Callable[[], Any],
        save: Callable[[Any, Path], Any],
        load: Callable[[Path], Any],
        suffix: str = ".safetensors",
    ) -> Any:
        path = self.artifacts / f"{name}{suffix}"
        if path.is_file():
            self.resumed.append(name)
            return load(path)
        value = compute()
        save(value, path)
        return value

    def save_figure(self, name: str, fig: Any, caption: str = "") -> str:
        import matplotlib.pyplot as plt

        path = self.out / f"{name}.png"
        tmp = self.out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
        plt.close(fig)
        self.figures.append((path.name, caption))
        return path.name


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj  # noqa: RET504


def run_recipe(
    name: str,
    config: Any,
    out: str | os.PathLike[str],
    *,
    model: Any = None,
) -> dict[str, Any]:
    """Check, run, and write ``metrics.json`` + ``report.md`` for one recipe."""
    import semhooks as sh

    recipe = get_recipe(name)
    if not isinstance(config, recipe.config_cls):
        raise ConfigError(
            f"recipe {name} needs a {recipe.config_cls.__name__}, got {type(config).__name__}"
        )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(out_dir, config, progress=getattr(config, "progress", True), _model=model)
    if recipe.check is not None:
        recipe.check(config, ctx)
    t0 = time.perf_counter()
    metrics = recipe.run(config, ctx)
    seconds = time.perf_counter() - t0
    provenance: dict[str, Any] = {"date": now_iso(), "semhooks_version": sh.__version__}
    if ctx._model is not None:
        provenance.update(sh.adapt(ctx._model).provenance())
    doc = {
        "recipe": name,
        "config": config_dict(config),
        "provenance": provenance,
        "seconds": round(seconds, 2),
        "resumed_artifacts": ctx.resumed,
        "metrics": _jsonable(metrics),
    }
    atomic_write_json(out_dir / "metrics.json", doc)
    atomic_write_text(out_dir / "report.md", render_report(recipe, doc, ctx))
    return doc


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_report(recipe: Recipe, doc: dict[str, Any], ctx: RunContext) -> str:
    lines = [f"# {recipe.name}", "", recipe.description, ""]
    prov = doc["provenance"]
    lines += [
        f"Model `{prov.get('model', doc['config'].get('model'))}` "
        f"({prov.get('backend', '?')}, TransformerLens {prov.get('transformer_lens_version', '?')}), "
        f"semhooks {prov.get('semhooks_version')}, {prov.get('date')}; {doc['seconds']} s.",
        "",
    ]
    if doc["resumed_artifacts"]:
        lines += [f"Resumed from cached artifacts: {', '.join(doc['resumed_artifacts'])}.", ""]
    summary = doc["metrics"].get("summary") if isinstance(doc["metrics"], dict) else None
    if isinstance(summary, dict):
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in summary.items()]
        lines.append("")
    for table in doc["metrics"].get("tables", []) if isinstance(doc["metrics"], dict) else []:
        lines += [table, ""]
    for note in ctx.notes:
        lines += [note, ""]
    for fname, caption in ctx.figures:
        lines += [f"![{caption or fname}]({fname})", ""]
        if caption:
            lines += [f"*{caption}*", ""]
    lines += ["## Config", "", "```json", json.dumps(doc["config"], indent=2), "```", ""]
    return "\n".join(lines)
