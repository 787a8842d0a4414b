"""Property-based: malformed configs and command lines always end in exit code 2 with one
paragraph of explanation: no traceback, no model loaded, no run folder left behind.

Each drawn case breaks exactly one thing in an otherwise valid `draft train` command: a
wrong type, an unknown key or name, a zero or negative size, K larger than the sampler's
steps, a missing or unreadable file, non-UTF-8 text, or a malformed argument. Hypothesis is
derandomised so that the suite is reproducible; raise max_examples locally to search wider.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from draft_core import cli
from draft_core.config import Config, LoraSection, ModelSection, PromptsSection, TrainSection

BASE = ["--preset", "quickstart", "--set", "model.name=tiny-random"]
SIZES = [
    "train.steps",
    "train.batch_size",
    "train.grad_accum",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.max_nonfinite",
    "train.log_every",
    "train.sample_per_prompt",
    "lora.rank",
    "sampler.steps",
]
INTS = [k for k in SIZES if k != "sampler.steps"] + ["train.seed", "train.sample_every"]
FLOATS = ["train.lr", "train.weight_decay"]
CHOICES = ["model.dtype", "train.mixed_precision", "train.lr_decay"]
SECTIONS = {"model": ModelSection, "lora": LoraSection, "prompts": PromptsSection, "train": TrainSection}
PLUGIN_NAMES = {
    "sampler": {"ddim", "ddpm"},
    "estimator": {"draft", "draft-k", "draft-lv", "refl"},
    "reward": {"digit-classifier", "jpeg-compressibility", "jpeg-incompressibility", "rotation-anticorrelation"},
}

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=16)
ident = st.from_regex(r"[a-z][a-z_0-9]{0,10}", fullmatch=True)
json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False), text
)
json_value = st.one_of(json_scalar, st.lists(json_scalar, max_size=3), st.dictionaries(ident, json_scalar, max_size=2))


def sets(*pairs: tuple[str, object]) -> list[str]:
    return sum((["--set", f"{k}={v if isinstance(v, str) else json.dumps(v)}"] for k, v in pairs), [])


def not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# Each strategy draws (argv after "train", files to create: {relative path: bytes or None for a folder}).
non_positive = st.builds(lambda k, v: (BASE + sets((k, v)), {}), st.sampled_from(SIZES), st.integers(-(10**9), 0))
wrong_int = st.builds(
    lambda k, v: (BASE + sets((k, v)), {}),
    st.sampled_from(INTS),
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        text.filter(lambda s: not s.strip().lstrip("+-").isdigit()),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.none(),
    ).map(json.dumps),
)
wrong_float = st.builds(
    lambda k, v: (BASE + sets((k, v)), {}),
    st.sampled_from(FLOATS),
    st.one_of(st.booleans(), st.lists(st.floats(), max_size=2), st.none(), st.just("[1, 2]")).map(json.dumps),
)
bad_choice = st.builds(
    lambda k, v: (BASE + sets((k, v)), {}),
    st.sampled_from(CHOICES),
    ident.filter(lambda s: s not in {"auto", "float32", "bfloat16", "float16", "no", "bf16", "fp16", "none", "sqrt"}),
)
bad_lr = st.builds(
    lambda v: (BASE + sets(("train.lr", v)), {}), st.floats(max_value=0, allow_nan=False, allow_infinity=False)
)
bad_betas = st.builds(
    lambda v: (BASE + sets(("train.betas", v)), {}),
    st.one_of(
        st.lists(st.floats(0, 0.99), max_size=1),
        st.lists(st.floats(0, 0.99), min_size=3, max_size=4),
        st.tuples(st.floats(1, 100), st.floats(0, 0.99)).map(list),
    ),
)
unknown_key = st.builds(
    lambda sec, key, v: (BASE + sets((f"{sec}.{key}", v)), {}),
    st.sampled_from([*SECTIONS, "sampler", "estimator"]),
    ident,
    json_value,
).filter(
    lambda c: (
        c[0][-1].split("=", 1)[0].split(".")[1]
        not in {f for s in SECTIONS.values() for f in s.__dataclass_fields__}
        | {"name", "kl", "steps", "guidance_scale", "eta", "n", "k", "checkpoint", "k_range", "alignprop_range", "m"}
    )
)
unknown_top = st.builds(
    lambda key, v: (BASE + sets((key, v)), {}), ident.filter(lambda k: k not in Config.__dataclass_fields__), json_value
)
unknown_name = st.builds(
    lambda sec, name: (BASE + sets((f"{sec}.name", name)), {}),
    st.sampled_from(sorted(PLUGIN_NAMES)),
    text,
).filter(lambda c: c[0][-1].split("=", 1)[1].strip() not in set().union(*PLUGIN_NAMES.values()))
k_too_big = st.integers(1, 6).flatmap(
    lambda s: st.one_of(
        st.integers(s + 1, s + 50).map(
            lambda k: (BASE + sets(("sampler.steps", s), ("estimator", f"{{name: draft-k, k: {k}}}")), {})
        ),
        st.integers(s + 1, s + 50).map(
            lambda k: (BASE + sets(("sampler.steps", s), ("estimator", f"{{name: draft-k, k_range: [1, {k}]}}")), {})
        ),
    )
)
missing = st.one_of(
    ident.map(lambda n: (["missing/" + n + ".yaml"], {})),
    ident.map(lambda n: (BASE + sets(("prompts.source", f"nowhere/{n}.txt")), {})),
    ident.map(lambda n: (["--resume", f"no-such-run-{n}"], {})),
    st.just((["--resume", "empty-run"], {"empty-run": None})),
)
prompt_file = st.one_of(
    st.binary(min_size=1, max_size=40).filter(not_utf8),
    st.lists(st.sampled_from([b"", b"   ", b"# a comment"]), min_size=1, max_size=4).map(b"\n".join),
)
unreadable_prompts = st.one_of(
    prompt_file.map(lambda data: (BASE + sets(("prompts.source", "prompts.txt")), {"prompts.txt": data})),
    st.just((BASE + sets(("prompts.source", "a-folder")), {"a-folder": None})),
)
bad_config_file = st.one_of(
    st.binary(min_size=1, max_size=40).filter(not_utf8),
    st.sampled_from(
        [
            b"[1, 2",
            b"- a\n- b\n",
            b"just text",
            b"a: [",
            b"train: 5\n",
            b"model: [1]\n",
            b"train:\n  steps: -1\n",
            b"estimator: {name: draft-k, k: 0}\n",
            b"\tindented: tab\n",
        ]
    ),
    st.dictionaries(
        ident.filter(lambda k: k not in Config.__dataclass_fields__), json_scalar, min_size=1, max_size=3
    ).map(lambda d: json.dumps(d).encode()),
).map(lambda data: (["config.yaml"], {"config.yaml": data}))
bad_argv = st.one_of(
    ident.map(lambda n: (BASE + [f"--bogus-{n}"], {})),
    ident.map(lambda n: (BASE + ["--set", n], {})),
    st.just((["--resume", "r", "--preset", "quickstart"], {"r": None})),
    st.just(([], {})),
    ident.filter(lambda n: n != "quickstart").map(lambda n: (["--preset", n], {})),
    st.sampled_from([".a=1", "a..b=1", "=3"]).map(lambda s: (BASE + ["--set", s], {})),
    st.just((BASE + ["--out", "a-file"], {"a-file": b"x"})),
    st.just((BASE + ["--out", "a-file/run"], {"a-file": b"x"})),
    st.just((BASE + ["--out", "busy"], {"busy": None, "busy/x": b"x"})),
    text.map(lambda s: (BASE + ["--set", f"prompts.items=[{s}\udcff]"], {})),  # non-UTF-8 bytes in argv
)
CASES = st.one_of(
    non_positive,
    wrong_int,
    wrong_float,
    bad_choice,
    bad_lr,
    bad_betas,
    unknown_key,
    unknown_top,
    unknown_name,
    k_too_big,
    missing,
    unreadable_prompts,
    bad_config_file,
    bad_argv,
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(case=CASES)
def test_malformed_input_is_a_one_paragraph_error_with_exit_code_2(case, no_model, capsys, monkeypatch):
    argv, files = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        monkeypatch.chdir(root)
        for name, data in files.items():
            if data is None:
                (root / name).mkdir(parents=True)
            else:
                (root / name).write_bytes(data)
        before = sorted(p.relative_to(root) for p in root.rglob("*"))
        has_out = "--out" in argv or "--resume" in argv
        full = ["train", *argv, *([] if has_out else ["--out", "run"]), "--no-progress"]
        try:
            code = cli.main(full)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, (full, err)
        assert "Traceback" not in err and err.strip(), (full, err)
        assert "\n\n" not in err.strip(), (full, err)  # one paragraph
        assert "error" in err
        # Nothing was created: no run folder that a later --resume could misread.
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == before, full


def test_resume_of_a_run_that_never_checkpointed_starts_over(tmp_path, no_model):
    """A folder with config.yaml but no checkpoint (stopped during its first step) is not an
    error: --resume restarts it from step 0; here it gets as far as loading the model."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: tiny-random}\n")
    with pytest.raises(AssertionError, match="a model was loaded"):
        cli.main(["train", "--resume", str(run), "--no-progress"])
