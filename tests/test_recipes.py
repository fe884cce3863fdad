"""Recipes: config validation, end-to-end runs at small size, resume == uninterrupted, CLI."""

from __future__ import annotations

import json
import math
import re

import pytest

from recipes import ConfigError, build_config, get_recipe, list_recipes, run_recipe
from semhooks.cli import main as cli_main

SMALL = {
    "lexical-layers": {
        "model": "tiny-llama",
        "encoder": "tiny-bert",
        "n_fit": 40,
        "n_eval": 40,
        "variants": ["base", "repeat"],
        "probe": False,
    },
    "pooling-sentiment": {
        "model": "tiny-gpt2",
        "n_train": 60,
        "n_test": 40,
        "transfer": ["yelp"],
        "layers": [0, 2],
        "poolings": ["mean", "last"],
        "cv": 2,
    },
    "relation-concepts": {  # a random model knows no facts: this one runs on SmolLM2
        "model": "smollm2-135m",
        "relations": ["substance_phase"],
        "subject_layer": 12,
        "object_layer": 20,
        "rank": 8,
        "max_prompts": 24,
        "n_lre_prompts": 4,
    },
    "emergence-profile": {"model": "tiny-gpt2", "inputs": "sentences", "n": 120, "reduce_dim": 4},
    "vocab-calibration": {
        "model": "tiny-llama",
        "datasets": ["yelp"],
        "n_train": 60,
        "n_test": 40,
        "k_shot": 1,
        "icl_limit": 10,
        "label_words": ["bad", "good"],
    },
    "concept-steering": {
        "model": "tiny-llama",
        "layer": 1,
        "alphas": [-1.0, 0.0, 1.0],
        "max_new_tokens": 3,
        "prompts": ["The movie was"],
    },
}


def finite_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from finite_numbers(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from finite_numbers(v)
    elif isinstance(obj, float):
        yield obj


def small_config(name, **extra):
    recipe = get_recipe(name)
    return build_config(
        recipe.config_cls, overrides={**SMALL.get(name, {}), "progress": False, **extra}
    )


def test_all_shipped_recipes_are_registered():
    assert set(SMALL) <= set(list_recipes())


REAL = {"relation-concepts", "vocab-calibration"}  # need a model that knows facts / words


def _param(n):
    return pytest.param(n, marks=pytest.mark.real) if n in REAL else n


@pytest.mark.parametrize("name", [_param(n) for n in sorted(SMALL)])
def test_recipe_runs_end_to_end(name, tmp_path, request):
    model = None
    if name in REAL:
        smollm2 = request.getfixturevalue("smollm2")  # skips cleanly when it is not installed
        model = smollm2 if SMALL[name]["model"] == "smollm2-135m" else None
    doc = run_recipe(name, small_config(name), tmp_path / name, model=model)
    saved = json.loads((tmp_path / name / "metrics.json").read_text())
    assert saved["recipe"] == name and saved["config"]["model"] == SMALL[name]["model"]
    summary = saved["metrics"]["summary"]
    assert summary, "a recipe must report summary metrics"
    numbers = [v for v in summary.values() if isinstance(v, (int, float))]
    assert numbers and all(math.isfinite(v) for v in numbers)
    report = (tmp_path / name / "report.md").read_text()
    assert report.startswith(f"# {name}")
    for png in [line for line in report.splitlines() if line.startswith("![")]:
        fname = re.search(r"\]\(([^()]+)\)$", png).group(1)
        assert (tmp_path / name / fname).stat().st_size > 1000
    assert doc["provenance"]["model"] == SMALL[name]["model"]


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_quickstart_on_smollm2(tmp_path, smollm2):
    """The README's main job, end to end on the embedded model (small sizes)."""
    config = small_config("quickstart", wic_pairs=40, emergence_lists=150)
    doc = run_recipe("quickstart", config, tmp_path / "qs", model=smollm2)
    summary = doc["metrics"]["summary"]
    for key in (
        "wic.decoder_repeat_best_acc",
        "steering.logit_diff_push",
        "emergence.mean_ie",
        "relation.substance_phase_LRC_accuracy",
    ):
        assert key in summary and math.isfinite(summary[key]), key
    assert (tmp_path / "qs" / "report.md").read_text().count("![") >= 3
    # pushing along the sentiment direction moves good-vs-bad logits towards "good" far more
    # than a random direction of equal norm does
    push, control = summary["steering.logit_diff_push"], summary["steering.control_logit_diff_push"]
    assert push > 1.0 and push > 2 * abs(control), (push, control)  # measured 3.62 vs 1.27


def test_resumed_run_gives_the_same_metrics(tmp_path):
    name = "pooling-sentiment"
    first = run_recipe(name, small_config(name), tmp_path / "run")
    again = run_recipe(name, small_config(name), tmp_path / "run")
    assert again["resumed_artifacts"] == ["pooling_study"]
    assert again["metrics"] == first["metrics"]


def test_config_errors_name_the_key():
    recipe = get_recipe("concept-steering")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['layr'\]"):
        build_config(recipe.config_cls, overrides=["layr=3"])
    with pytest.raises(ConfigError, match="layer: expected an integer, got 'three'"):
        build_config(recipe.config_cls, overrides=["layer=three"])
    with pytest.raises(ConfigError, match="alphas\\[1\\]: expected a number"):
        build_config(recipe.config_cls, overrides=["alphas=1,x"])
    with pytest.raises(ConfigError, match="unknown recipe 'quikstart'.*Did you mean quickstart"):
        get_recipe("quikstart")
    config = build_config(recipe.config_cls, overrides={"model": "tiny-llama", "layer": 9})
    with pytest.raises(ConfigError, match="layer: layer 9 is out of range"):
        run_recipe("concept-steering", config, "/tmp/semhooks-never-written")


def test_config_files(tmp_path):
    recipe = get_recipe("concept-steering")
    (tmp_path / "c.toml").write_text("layer = 5\nalphas = [1.0, 2.0]\n")
    (tmp_path / "c.yaml").write_text("layer: 6\nmodel: tiny-llama\n")
    assert build_config(recipe.config_cls, tmp_path / "c.toml").alphas == [1.0, 2.0]
    assert build_config(recipe.config_cls, tmp_path / "c.yaml", ["layer=7"]).layer == 7
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(recipe.config_cls, tmp_path / "missing.toml")


def test_cli_exit_codes(tmp_path, capsys):
    assert cli_main(["list"]) == 0
    assert "quickstart" in capsys.readouterr().out
    assert cli_main(["run", "concept-steering", "--set", "layr=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layr" in err
    out = tmp_path / "cs"
    argv = ["run", "concept-steering", "--out", str(out)]
    for k, v in SMALL["concept-steering"].items():
        argv += ["--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}"]
    assert cli_main([*argv, "--set", "progress=false"]) == 0
    assert cli_main(["show", str(out)]) == 0
    assert "concept-steering on tiny-llama" in capsys.readouterr().out
    assert cli_main(["show", str(tmp_path / "nothing")]) == 2


def test_custom_recipe_in_twenty_lines(tmp_path, monkeypatch):
    plugin = tmp_path / "my_recipe.py"
    plugin.write_text(
        "from dataclasses import dataclass, field\n"
        "import semhooks as sh\n"
        "from recipes import RecipeConfig, register\n\n"
        "@dataclass\n"
        "class NormsConfig(RecipeConfig):\n"
        "    texts: list[str] = field(default_factory=lambda: ['The capital of France is'])\n\n"
        "@register('layer-norms', NormsConfig)\n"
        "def layer_norms(config, ctx):\n"
        "    '''Mean norm of the last-token state per layer.'''\n"
        "    states = ctx.cached_states('last', lambda: sh.extract_states(ctx.model, config.texts, progress=False))\n"
        "    return {'summary': {f'layer_{l}': float(states.layer(l).norm(dim=-1).mean()) for l in states.layers}}\n"
    )
    import recipes.core as core

    monkeypatch.setattr(core, "_PLUGINS_LOADED", False)
    monkeypatch.setenv("SEMHOOKS_RECIPES", str(plugin))
    assert "layer-norms" in list_recipes()
    assert (
        cli_main(["run", "layer-norms", "--model", "tiny-gpt2", "--out", str(tmp_path / "o")]) == 0
    )
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert set(doc["metrics"]["summary"]) == {"layer_0", "layer_1", "layer_2"}


def test_relation_concepts_fails_clearly_when_no_relation_survives(tmp_path):
    """A random model keeps no valid prompt: the run must say so, not report an empty table."""
    config = small_config(
        "relation-concepts", model="tiny-llama", subject_layer=1, object_layer=2, max_prompts=8
    )
    with pytest.raises(RuntimeError, match="no relation could be evaluated.*substance_phase"):
        run_recipe("relation-concepts", config, tmp_path / "rc")
    assert not (tmp_path / "rc" / "metrics.json").exists()
