"""draft eval: prompt sets (text, categories, HPDv2 JSON), reproducible tables, statistics, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from model_fixtures import LinearReward

from draft_core.cli import main
from draft_core.errors import ConfigError
from draft_core.evaluation import (
    PromptItem,
    RowSpec,
    evaluate,
    item_seed,
    load_prompt_set,
    sheet_prompts,
    to_markdown,
    to_records,
)
from draft_core.evaluation.baselines import BestOfN, Plain
from draft_core.lora import LoraSpec, add_lora, apply_loras, save_lora
from draft_core.media import read_png_info
from draft_core.models.tiny import build_tiny_random
from draft_core.samplers.ddim import DDIMSampler


# -- prompt sets ------------------------------------------------------------------------------
def test_text_file_with_and_without_categories(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# a comment\nanimals\ta cat\nanimals\ta dog\n\nplaces\ta beach\na lone prompt\n")
    assert load_prompt_set(str(path)) == [
        PromptItem("animals", "a cat"),
        PromptItem("animals", "a dog"),
        PromptItem("places", "a beach"),
        PromptItem("mine", "a lone prompt"),
    ]
    assert [i.prompt for i in load_prompt_set(str(path), per_category=1)] == ["a cat", "a beach", "a lone prompt"]


def test_builtin_sets():
    items = load_prompt_set("animals")
    assert len(items) == 45 and {i.category for i in items} == {"animals"} and items[0].prompt == "cat"


@pytest.mark.parametrize("nested", [False, True])
def test_hpdv2_benchmark_folder(tmp_path, nested):
    folder = tmp_path / "datasets" / "benchmark" if nested else tmp_path / "bench"
    folder.mkdir(parents=True)
    for style in ("photo", "anime", "paintings", "concept-art"):
        (folder / f"{style}.json").write_text(json.dumps([f"{style} prompt {k}" for k in range(3)]))
    (folder / "drawbench.json").write_text(json.dumps(["not one of the four"]))
    root = tmp_path / "datasets" if nested else folder
    items = load_prompt_set(str(root), per_category=2)
    assert [(i.category, i.prompt) for i in items] == [
        (s, f"{s} prompt {k}") for s in ("anime", "concept-art", "paintings", "photo") for k in range(2)
    ]


def test_prompt_set_errors(tmp_path):
    with pytest.raises(ConfigError, match="HPDv2 benchmark files"):
        load_prompt_set(str(tmp_path))
    bad = tmp_path / "photo.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(ConfigError, match="JSON array of strings"):
        load_prompt_set(str(bad))
    with pytest.raises(ConfigError, match="built-in prompt list"):
        load_prompt_set("no-such-set")
    with pytest.raises(ConfigError, match="positive integer"):
        load_prompt_set("animals", per_category=0)


def test_sheet_takes_prompts_round_robin_across_categories():
    items = [PromptItem(c, f"{c}{k}") for c in "abc" for k in range(3)]
    assert sheet_prompts(items, 4) == [0, 1, 3, 6]


# -- evaluate ----------------------------------------------------------------------------------
ITEMS = [PromptItem("animals", "a cat"), PromptItem("animals", "a dog"), PromptItem("things", "a car")]


@pytest.fixture(scope="module")
def tiny_with_saved_lora(tmp_path_factory):
    model = build_tiny_random()
    trained = build_tiny_random()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        add_lora(trained.unet, rank=2, init=False)
    folder = save_lora(trained.unet, tmp_path_factory.mktemp("lora"))
    spec = LoraSpec(folder.parent, 0.8)
    apply_loras(model.unet, [spec])
    return model, spec


def run_eval(model, spec, batch_size, rewards, n_rows=3):
    sampler = DDIMSampler(steps=2, guidance_scale=3.0)
    rows = [RowSpec([], Plain()), RowSpec([spec], Plain()), RowSpec([], BestOfN(next(iter(rewards.values())), n=2))][
        :n_rows
    ]
    return evaluate(
        model, sampler, rows, ITEMS, rewards, n_per_prompt=2, seed=5, batch_size=batch_size, sheet_columns=2
    )


def without_time(records):
    return [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in records]


def test_tables_are_reproducible_and_do_not_depend_on_the_batch_size(tiny_with_saved_lora):
    model, spec = tiny_with_saved_lora
    rewards = {
        "linear": LinearReward((3, *model.image_size)),
        "negated": lambda x, p: -LinearReward((3, *model.image_size), seed=1)(x, p),
    }
    a, b, c = (
        run_eval(model, spec, 4, rewards),
        run_eval(model, spec, 4, rewards),
        run_eval(model, spec, 1, rewards, n_rows=1),
    )
    assert [r.scores for r in a.rows] == [r.scores for r in b.rows]  # bit for bit
    assert without_time(to_records(a)) == without_time(to_records(b))
    for ra, rc in zip(a.rows, c.rows):  # same images one at a time, up to float rounding of batched kernels
        for name in rewards:
            torch.testing.assert_close(
                torch.tensor(ra.scores[name]), torch.tensor(rc.scores[name]), rtol=1e-4, atol=1e-4
            )
    base, lora, best = a.rows
    assert base.scores != lora.scores  # the LoRA row runs with the adapter, the base row without
    assert all(
        x >= y for x, y in zip(best.scores["linear"], base.scores["linear"])
    )  # best-of-2 includes plain's sample
    assert a.sheet.shape == (3 * 2, 3, *model.image_size) and a.sheet_columns == 2


def test_statistics_are_mean_and_standard_error(tiny_with_saved_lora):
    model, spec = tiny_with_saved_lora
    result = run_eval(model, spec, 6, {"linear": LinearReward((3, *model.image_size))})
    row = result.rows[0]
    animals = row.scores["linear"][:4]  # two prompts x two samples, in sample order
    mean = sum(animals) / 4
    se = math.sqrt(sum((v - mean) ** 2 for v in animals) / 3) / 2
    got_mean, got_se, n = result.stats(row, "linear", "animals")
    assert n == 4 and got_mean == pytest.approx(mean, rel=1e-12) and got_se == pytest.approx(se, rel=1e-9)
    assert result.stats(row, "linear", None)[2] == 6
    md = to_markdown(result)
    assert md.splitlines()[0] == "| configuration | animals | things | all | s / image |"
    assert f"{mean:.4g} ± {se:.2g}" in md.splitlines()[2]


def test_item_seeds_differ_per_prompt_and_sample():
    seeds = {item_seed(0, i, j) for i in range(20) for j in range(20)}
    assert len(seeds) == 400 and item_seed(0, 1, 2) == item_seed(0, 1, 2) != item_seed(1, 1, 2)


# -- CLI ---------------------------------------------------------------------------------------------
def eval_cli(out, *extra):
    return main(
        [
            "eval",
            "--model",
            "tiny-random",
            "--prompts",
            "animals",
            "--prompts-per-category",
            "2",
            "--reward",
            "jpeg-compressibility",
            "--reward",
            "rotation-anticorrelation",
            "--n-per-prompt",
            "2",
            "--steps",
            "2",
            "--guidance",
            "3",
            "--seed",
            "1",
            "--quiet",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_eval_cli_writes_the_table_and_is_deterministic(tmp_path, capsys):
    assert eval_cli(tmp_path / "a", "--method", "plain", "--method", "prompt-template") == 0
    printed = capsys.readouterr().out
    assert (
        "| configuration | jpeg-compressibility: animals | rotation-anticorrelation: animals | s / image |" in printed
    )
    assert "| base, prompt-template |" in printed and "cost of base, prompt-template" in printed
    for name in ("table.md", "table.csv", "results.json", "contact_sheet.png"):
        assert (tmp_path / "a" / name).is_file(), name
    assert eval_cli(tmp_path / "b", "--method", "plain", "--method", "prompt-template") == 0
    first, second = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("a", "b"))
    assert [r["scores"] for r in first["rows"]] == [r["scores"] for r in second["rows"]]
    assert len(first["rows"][0]["scores"]["jpeg-compressibility"]) == 4
    csv_head = (tmp_path / "a" / "table.csv").read_text().splitlines()[0]
    assert csv_head == "configuration,method,loras,reward,category,n,mean,se,seconds_per_image"
    # The contact sheet names its rows (configurations) and columns (prompts), and how it was made.
    info = read_png_info(tmp_path / "a" / "contact_sheet.png")
    assert (
        info["configurations"] == ["base", "base, prompt-template"] and info["steps"] == 2 and info["guidance"] == 3.0
    )
    assert info["seed"] == 1 and info["sampler"] == "ddim" and len(info["prompt"]) == 2 and info["layout"]["left"] > 0


def test_eval_cli_input_errors_come_before_the_model(tmp_path, capsys, no_model):
    assert main(["eval", "--prompts", "animals", "--reward", "no-such-reward", "--out", str(tmp_path)]) == 2
    assert "unknown reward 'no-such-reward'" in capsys.readouterr().err
    assert main(["eval", "--prompts", "animals", "--reward", "digit-classifier:target=11", "--out", str(tmp_path)]) == 2
    assert "target" in capsys.readouterr().err
    assert main(["eval", "--prompts", "nothing-here", "--reward", "jpeg-compressibility", "--out", str(tmp_path)]) == 2
    assert (
        main(
            [
                "eval",
                "--prompts",
                "animals",
                "--reward",
                "jpeg-compressibility",
                "--method",
                "best-of",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "Did you mean 'best-of-n'" in capsys.readouterr().err
