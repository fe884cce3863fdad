"""Recipes: config validation, end-to-end runs at small size, resume == uninterrupted, CLI."""

from __future__ import annotations

import json
import math
import re

import pytest

from recipes import ConfigError, build_config, get_recipe, list_recipes, run_recipe
from recipes.cli import main as cli_main

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
    assert_trustworthy_report(doc, report)


def assert_trustworthy_report(doc, report):
    """Every metric defined, n and a 95% interval beside every accuracy, the measured time,
    and the warnings section."""
    summary = doc["metrics"]["summary"]
    assert "## Definitions" in report and "no definition given" not in report
    accuracies = [
        k for k in summary if "accuracy" in k and not k.endswith(("_n", "_ci95", "_selected_on"))
    ]
    for key in accuracies:
        assert isinstance(summary[f"{key}_n"], int) and summary[f"{key}_n"] > 0, key
        low, high = summary[f"{key}_ci95"]
        assert low <= summary[key] <= high, key
        row = next(line for line in report.splitlines() if line.startswith(f"| {key} |"))
        assert f"(n={summary[f'{key}_n']}, 95% CI [" in row, row
    assert f"Measured run time: {doc['seconds']} s" in report
    assert "## Warnings raised during the run" in report
    for w in doc["warnings"]:
        assert w["message"] in report


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_quickstart_on_smollm2(tmp_path, smollm2):
    """The README's main job, end to end on the embedded model (small sizes)."""
    config = small_config("quickstart", wic_pairs=40, emergence_lists=150)
    doc = run_recipe("quickstart", config, tmp_path / "qs", model=smollm2)
    summary = doc["metrics"]["summary"]
    for key in (
        "wic.decoder_repeat_accuracy",
        "steering.logit_diff_push",
        "emergence.mean_ie",
        "relation.substance_phase_LRC_accuracy",
    ):
        assert key in summary and math.isfinite(summary[key]), key
    report = (tmp_path / "qs" / "report.md").read_text()
    assert report.count("![") >= 3
    assert_trustworthy_report(doc, report)
    assert "five-minute" not in report
    for term in (
        "`logit_diff_push`",
        "`logit_diff_max_change`",
        "`control_* (steering)`",
        "`causal / causality`",
        "`LRC control (swap)`",
    ):
        assert term in report, term
    assert "greedy generations (6 new tokens) at alpha = +/-3" in report
    # pushing along the sentiment direction moves good-vs-bad logits towards "good" far more
    # than a random direction of equal norm does
    push, control = summary["steering.logit_diff_push"], summary["steering.control_logit_diff_push"]
    assert push > 1.0 and push > 2 * abs(control), (push, control)  # measured 3.62 vs 1.27
    # the documented fast path of the emergence step: its MINE fits train stacked
    emergence = json.loads((tmp_path / "qs" / "artifacts" / "emergence.json").read_text())
    assert emergence["protocol"]["fit_path"].startswith("stacked"), emergence["protocol"]


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


# ---------------------------------------------------------------------- reports a researcher trusts
def _register(monkeypatch, name, fn):
    from recipes.config import RecipeConfig
    from recipes.core import REGISTRY, Recipe, load_plugins

    load_plugins()
    monkeypatch.setitem(REGISTRY, name, Recipe(name, f"A test recipe ({name}).", RecipeConfig, fn))


def test_warnings_raised_during_a_run_are_in_the_report_and_reach_the_caller(tmp_path, monkeypatch):
    import warnings

    from recipes.config import RecipeConfig
    from semhooks.errors import NumericalWarning

    def noisy(config, ctx):
        for _ in range(2):
            warnings.warn("estimate within 90% of its ceiling", NumericalWarning, stacklevel=1)
        warnings.warn("a library notice", UserWarning, stacklevel=1)
        ctx.define("value", "a number")
        return {"summary": {"value": 1.0}}

    _register(monkeypatch, "noisy", noisy)
    with pytest.warns(Warning) as caught:
        doc = run_recipe("noisy", RecipeConfig(progress=False), tmp_path / "noisy")
    # re-emitted once per distinct message, after the files were written
    assert [str(w.message) for w in caught if w.category is NumericalWarning] == [
        "estimate within 90% of its ceiling"
    ]
    assert any(w.category is UserWarning for w in caught)
    assert [(w["category"], w["count"]) for w in doc["warnings"]] == [
        ("NumericalWarning", 2),
        ("UserWarning", 1),
    ]
    saved = json.loads((tmp_path / "noisy" / "metrics.json").read_text())
    assert saved["warnings"] == doc["warnings"]
    report = (tmp_path / "noisy" / "report.md").read_text()
    assert "2 distinct warning(s) were raised during this run" in report
    assert "- `NumericalWarning` (" in report and "2 times): estimate within 90%" in report
    assert "a library notice" in report


def test_a_failing_run_raises_its_own_error_not_a_recorded_warning(tmp_path, monkeypatch):
    import warnings

    from recipes.config import RecipeConfig
    from semhooks.errors import NumericalWarning

    def broken(config, ctx):
        warnings.warn("saturated", NumericalWarning, stacklevel=1)
        raise RuntimeError("boom")

    _register(monkeypatch, "broken", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="boom"):
            run_recipe("broken", RecipeConfig(progress=False), tmp_path / "b")


def test_undefined_metrics_are_named_in_the_report(tmp_path, monkeypatch):
    from recipes.config import RecipeConfig

    _register(monkeypatch, "terse", lambda config, ctx: {"summary": {"mystery_score": 0.5}})
    run_recipe("terse", RecipeConfig(progress=False), tmp_path / "t")
    report = (tmp_path / "t" / "report.md").read_text()
    assert "- `mystery_score`: no definition given by the recipe." in report
    assert "## Warnings raised during the run\n\nNone." in report


def test_a_failed_config_check_creates_no_output_folder(tmp_path):
    config = small_config("concept-steering", layer=9)
    with pytest.raises(ConfigError, match="layer 9 is out of range"):
        run_recipe("concept-steering", config, tmp_path / "new" / "cs")
    assert not (tmp_path / "new").exists()


def test_an_unknown_relation_lists_the_valid_ones(tmp_path):
    from semhooks.relations import list_relations

    config = small_config("relation-concepts", model="tiny-llama", relations=["substance_phaze"])
    with pytest.raises(ConfigError) as info:
        run_recipe("relation-concepts", config, tmp_path / "rc")
    message = str(info.value)
    assert "Did you mean substance_phase?" in message and "\n" not in message
    assert all(name in message for name in list_relations())
    assert not (tmp_path / "rc").exists()


def test_lexical_layers_reports_the_layer_chosen_on_the_fit_split(tmp_path):
    import numpy as np

    config = small_config("lexical-layers", encoder=None)
    doc = run_recipe("lexical-layers", config, tmp_path / "wic")
    summary, result = doc["metrics"]["summary"], doc["metrics"]["results"]["decoder"]
    for variant in config.variants:
        i = int(np.argmax(result["fit_accuracy"][variant]))
        assert summary[f"decoder_{variant}_layer"] == result["layers"][i]
        assert summary[f"decoder_{variant}_accuracy"] == pytest.approx(
            result["accuracy"][variant][i]
        )
        assert summary[f"decoder_{variant}_accuracy_n"] == 40
    report = (tmp_path / "wic" / "report.md").read_text()
    assert "chosen on the fit split" in report and "(optimistic" in report


def test_pooling_selection_uses_cross_validation_not_the_evaluation_set():
    from semhooks.studies.probing import PoolingResult

    rows = [
        {"eval_set": "dev", "layer": 0, "pooling": "mean", "accuracy": 0.9, "n": 50,
         "cv_accuracy": 0.6, "ci_low": 0.8, "ci_high": 0.95},
        {"eval_set": "dev", "layer": 1, "pooling": "mean", "accuracy": 0.7, "n": 50,
         "cv_accuracy": 0.8, "ci_low": 0.6, "ci_high": 0.8},
    ]  # fmt: skip
    res = PoolingResult("m", False, [0, 1], ["mean"], "train", ["dev"], rows)
    assert res.best("dev")["layer"] == 0  # the evaluation peak (optimistic)
    assert res.selected("dev")["layer"] == 1
    old = PoolingResult("m", False, [0, 1], ["mean"], "train", ["dev"],
                        [{k: v for k, v in r.items() if k != "cv_accuracy"} for r in rows])  # fmt: skip
    assert old.selected("dev") is None


def test_concept_steering_report_states_the_intervention_scale(tmp_path):
    from recipes.concept_steering import ConceptSteeringConfig
    from recipes.quickstart import QuickstartConfig, _steps

    assert len(ConceptSteeringConfig().alphas) > 3
    steering = next(c for step, _, c in _steps(QuickstartConfig()) if step == "steering")
    assert len(steering.alphas) > 3
    doc = run_recipe("concept-steering", small_config("concept-steering"), tmp_path / "cs")
    summary = doc["metrics"]["summary"]
    assert summary["layer"] == 1 and summary["generate_alpha"] == 3.0
    report = (tmp_path / "cs" / "report.md").read_text()
    assert (
        "| prompt | no steering | alpha = +3 (+ direction) | alpha = -3 (- direction) |" in report
    )
    assert f"||v|| = {summary['direction_norm']:.4g}" in report
    assert "h <- h + alpha v at `blocks.1.hook_resid_post`" in report
    assert "of the residual norm" in report
    assert "Steering at layer 1 (resid_post, all positions)" in report  # the figure caption


def test_quickstart_emergence_step_takes_the_stacked_mine_path():
    from recipes.quickstart import QuickstartConfig, _steps
    from semhooks.estimators.mi import can_stack
    from semhooks.studies.emergence import make_estimator

    emergence = next(c for step, _, c in _steps(QuickstartConfig()) if step == "emergence")
    assert can_stack(make_estimator(emergence.estimator))


def test_quickstart_title_promises_no_duration():
    recipe = get_recipe("quickstart")
    assert "minute" not in recipe.description
    import recipes.quickstart as quickstart

    assert "minute" not in (quickstart.__doc__ or "")


def test_relation_table_gives_an_interval_beside_every_proportion():
    from semhooks.relations import table_markdown
    from semhooks.relations.evaluation import RelationEvaluation

    rows = [{"method": "LRC", "accuracy": 0.7, "n_test": 10, "causality": 0.5, "control": 0.1}]
    ev = RelationEvaluation("r", "factual", rows, 20, 20, 10, 10, 3, faithfulness=0.6)
    line = table_markdown([ev], ci=True).splitlines()[2]
    assert line == (
        "| r | factual | 10 | 3 | 0.60 [0.31, 0.83] | 0.70 [0.40, 0.89] | 0.50 [0.24, 0.76] | "
        "0.10 [0.02, 0.40] |"
    )


# ---------------------------------------------------------------------- CLI details
def test_cli_bad_model_name_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "bad"
    assert cli_main(["run", "concept-steering", "--model", "no-such-org/no-such-model",
                     "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("semhooks:")]
    assert len(line) == 1 and "no-such-org/no-such-model" in line[0], err
    assert "Traceback" not in err and not out.exists()
    assert cli_main(["summary", "--model", "no-such-org/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("semhooks:") == 1


def test_cli_show_json_into_a_closed_pipe_ends_quietly(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    big = {f"metric_{i}": float(i) for i in range(20_000)}  # well beyond a pipe buffer
    doc = {"recipe": "x", "config": {"model": "m"}, "seconds": 1.0, "metrics": {"summary": big}}
    (run / "metrics.json").write_text(json.dumps(doc))
    cmd = f"'{sys.executable}' -m recipes.cli show '{run}' --json | head -n 2"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert proc.stdout.splitlines()[0] == "{"
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


def test_cli_summary_is_documented(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["--help"])
    assert info.value.code == 0
    assert "per-layer summary of a model's states" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["summary", "--help"])
    text = capsys.readouterr().out
    for words in ("mean norm", "cosine", "logit-lens", "--model", "tiny-llama"):
        assert words in text, words
