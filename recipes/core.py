"""Recipe machinery: a registry, the run folder with resumable artifacts, the runner.

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

import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipes.config import ConfigError, RecipeConfig, config_dict, validate_config
from recipes.report import Definition, render_report
from semhooks.io.artifacts import atomic_write_json, atomic_write_text, now_iso
from semhooks.io.jsonable import to_jsonable

__all__ = [
    "REGISTRY",
    "Recipe",
    "RunContext",
    "get_recipe",
    "load_plugins",
    "register",
    "run_recipe",
]


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
    _code_key: dict[str, str] | None = field(default=None, repr=False)
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
        and the semhooks version and source code (semhooks' and the recipes'). A cached artifact
        is reused only under the same key."""
        from semhooks.io.artifacts import semhooks_version, source_sha256
        from semhooks.io.fingerprint import model_fingerprint

        if self._model_key is None:
            self._model_key = model_fingerprint(self.model)
        if self._code_key is None:  # once per run: the code does not change under it
            self._code_key = {
                "semhooks_version": semhooks_version(),
                "semhooks_source_sha256": source_sha256("semhooks"),
                "recipes_source_sha256": source_sha256("recipes"),
            }
        cls = type(self.config)
        config = {k: v for k, v in config_dict(self.config).items() if k != "progress"}
        return {
            "artifact": name,
            "recipe_config": f"{cls.__module__}.{cls.__qualname__}",
            "config": config,
            "model": self._model_key,
            **self._code_key,
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
