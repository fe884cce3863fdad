"""One-command studies that chain semhooks steps: a registry, the runner and the report writer.

>>> from recipes import list_recipes
>>> "quickstart" in list_recipes()
True

Write your own in ~20 lines (see README, "Custom recipes")::

    from dataclasses import dataclass
    import semhooks as sh
    from recipes import RecipeConfig, register

    @dataclass
    class NormsConfig(RecipeConfig):
        texts: list[str] = ("The capital of France is",)

    @register("layer-norms", NormsConfig)
    def layer_norms(config, ctx):
        '''Mean norm of the last-token state per layer.'''
        states = ctx.cached_states("last", lambda: sh.extract_states(ctx.model, list(config.texts)))
        ctx.define("layer_<l>", "mean L2 norm of the last-token state at layer l", r"^layer_[0-9]+$")
        return {"summary": {f"layer_{l}": float(states.layer(l).norm(dim=-1).mean())
                            for l in states.layers}}

The report (``report.md``) defines every metric a recipe registered with ``ctx.define`` and
names the ones it did not; an accuracy added with ``recipes.report.add_proportion(summary,
key, value, n)`` is shown with its n and 95% Wilson interval; every warning raised during the run
is listed, and the measured run time is stated.
"""

from recipes.config import ConfigError, RecipeConfig, build_config
from recipes.core import (
    REGISTRY,
    Recipe,
    RunContext,
    get_recipe,
    load_plugins,
    register,
    run_recipe,
)


def list_recipes() -> list[str]:
    load_plugins()
    return sorted(REGISTRY)


__all__ = [
    "REGISTRY",
    "ConfigError",
    "Recipe",
    "RecipeConfig",
    "RunContext",
    "build_config",
    "get_recipe",
    "list_recipes",
    "load_plugins",
    "register",
    "run_recipe",
]
