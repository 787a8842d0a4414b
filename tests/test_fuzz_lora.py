"""Fuzz wall: malformed LoRA files (issue 26's cases and their mutations) against `draft lora export | mix | fuse`
and `draft sample --lora`, in-process. Each case ends in a clear error (exit 2, one paragraph) or, for a file
that is still a LoRA, an export whose kohya deltas are the input's; no model loads for a refused file."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from fuzz_support import TALLY, examples, judge, report, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from run_fixtures import save_random_lora
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import draft_core.models.loading
from draft_core.lora.validate import METADATA_KEY

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture(scope="module", autouse=True)
def tally():
    TALLY.clear()
    yield
    print("\n" + report("lora"))
    assert TALLY["tracebacks"] == 0 and TALLY["silent"] == 0


@pytest.fixture(scope="module")
def seed_lora(tmp_path_factory):
    """The tensors and metadata of a real LoRA (rank 2 on tiny-random's UNet), trimmed to 6 modules for speed."""
    path = save_random_lora(tmp_path_factory.mktemp("seed") / "lora")
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata() or {})
    tensors = load_file(path)
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in tensors})[:6]
    return {k: v for k, v in tensors.items() if k.rsplit(".lora_", 1)[0] in modules}, metadata


# -- mutations: (kind, args); each says whether it leaves a usable LoRA ------------------------------
BAD_DTYPES = ["int32", "int64", "uint8", "bool", "complex64"]
GOOD_DTYPES = ["float16", "bfloat16", "float64"]
BAD_METADATA = [
    "not json",
    "a list",
    "r=0",
    "r=-1",
    "r=str",
    "r=mismatch",
    "alpha=0",
    "alpha=-3",
    "alpha=nan",
    "rank_pattern=0",
    "use_rslora=str",
]
GOOD_METADATA = ["none", "alpha=7", "rslora"]
BYTES = ["truncate", "empty", "header", "png", "random", "zero header length", "huge header length"]

tensor_mutation = st.one_of(
    st.tuples(st.just("none")),
    st.tuples(st.just("dtype"), st.sampled_from(BAD_DTYPES), st.integers(0, 11)),
    st.tuples(st.just("good dtype"), st.sampled_from(GOOD_DTYPES)),
    st.tuples(
        st.just("nonfinite"), st.sampled_from([math.nan, math.inf, -math.inf]), st.integers(0, 11), st.floats(0, 1)
    ),
    st.tuples(st.just("ndim"), st.sampled_from([0, 1, 3]), st.integers(0, 11)),
    st.tuples(st.just("rank"), st.integers(0, 11)),
    st.tuples(st.just("unpaired"), st.sampled_from("AB"), st.integers(1, 6)),
    st.tuples(st.just("scale"), st.floats(1e-3, 1e3)),
)
metadata_mutation = st.one_of(
    st.tuples(st.just("none")),
    st.tuples(st.just("metadata"), st.sampled_from(BAD_METADATA)),
    st.tuples(st.just("good metadata"), st.sampled_from(GOOD_METADATA)),
)
BAD_KINDS = {"dtype", "nonfinite", "ndim", "rank", "unpaired", "metadata"}


def mutate(tensors: dict, metadata: dict, m: tuple) -> tuple[dict, dict]:
    """The seed LoRA with one mutation (each kind in BAD_KINDS leaves it unusable, the others keep it a LoRA)."""
    tensors, metadata = dict(tensors), dict(metadata)
    keys = sorted(tensors)
    kind = m[0]
    if kind == "dtype":
        key = keys[m[2] % len(keys)]
        t = tensors[key]
        tensors[key] = (t != 0) if m[1] == "bool" else (t * 100).to(getattr(torch, m[1]))
    elif kind == "good dtype":
        tensors = {k: v.to(getattr(torch, m[1])) for k, v in tensors.items()}
    elif kind == "nonfinite":
        key = keys[m[2] % len(keys)]
        t = tensors[key].clone()
        t.view(-1)[min(int(m[3] * t.numel()), t.numel() - 1)] = m[1]
        tensors[key] = t
    elif kind == "ndim":
        key = keys[m[2] % len(keys)]
        t = tensors[key]
        tensors[key] = {0: t.flatten()[0], 1: t.flatten(), 3: t[None]}[m[1]]
    elif kind == "rank":
        key = keys[m[1] % len(keys)]
        t = tensors[key]
        tensors[key] = t[:-1] if ".lora_A." in key else t[:, :-1]  # one rank fewer than its partner
    elif kind == "unpaired":
        for key in [k for k in keys if f".lora_{m[1]}." in k][: m[2]]:
            del tensors[key]
    elif kind in ("metadata", "good metadata"):
        config = json.loads(metadata[METADATA_KEY])
        change = {
            "r=0": ("unet.r", 0),
            "r=-1": ("unet.r", -1),
            "r=str": ("unet.r", "two"),
            "r=mismatch": ("unet.r", 3),
            "alpha=0": ("unet.lora_alpha", 0),
            "alpha=-3": ("unet.lora_alpha", -3),
            "alpha=nan": ("unet.lora_alpha", math.nan),
            "rank_pattern=0": ("unet.rank_pattern", {"to_q": 0}),
            "use_rslora=str": ("unet.use_rslora", "yes"),
            "alpha=7": ("unet.lora_alpha", 7),
            "rslora": ("unet.use_rslora", True),
        }.get(m[1])
        if m[1] == "none":
            metadata.pop(METADATA_KEY)
        elif m[1] == "not json":
            metadata[METADATA_KEY] = metadata[METADATA_KEY][:-3]
        elif m[1] == "a list":
            metadata[METADATA_KEY] = json.dumps(list(config))
        else:
            config[change[0]] = change[1]
            metadata[METADATA_KEY] = json.dumps(config)
    elif kind == "scale":
        tensors = {k: v * m[1] for k, v in tensors.items()}
    return tensors, metadata


def damage(data: bytes, how: str, at: int) -> bytes:
    if how == "truncate":
        return data[: max(1, at % len(data))]
    if how == "empty":
        return b""
    if how == "header":
        return data[:8] + b"{not json" + data[17:]
    if how == "png":
        return PNG
    if how == "random":
        return bytes((at * 7919 + i * 104729) % 256 for i in range(64 + at % 4096))
    if how == "zero header length":
        return struct.pack("<Q", 0) + data[8:]
    return struct.pack("<Q", 1 << 40) + data[8:]


def expected_deltas(tensors: dict, metadata: dict) -> dict[str, torch.Tensor]:
    """ΔW = scale · B A per module, in float64, with peft's scale from the metadata (1 without)."""
    config = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else {}
    out = {}
    for key in tensors:
        if ".lora_A." in key:
            name = key.split(".lora_A.")[0]
            a, b = tensors[key].double(), tensors[f"{name}.lora_B.weight"].double()
            r = a.shape[0]
            if not config:
                scale = 1.0
            else:
                alpha = config.get("unet.lora_alpha", r)
                scale = alpha / math.sqrt(r) if config.get("unet.use_rslora") else alpha / r
            out[name.split(".", 1)[1]] = scale * (b @ a)
    return out


def check_export(out_file, tensors, metadata):
    got = load_file(out_file)
    want = expected_deltas(tensors, metadata)
    assert len([k for k in got if k.endswith(".lora_down.weight")]) == len(want)
    for name, delta in want.items():
        key = "lora_unet_" + name.replace(".", "_")
        down, up, alpha = (
            got[f"{key}.lora_down.weight"].double(),
            got[f"{key}.lora_up.weight"].double(),
            float(got[f"{key}.alpha"]),
        )
        kohya = (alpha / down.shape[0]) * (up @ down)
        # alpha is stored as float32: the deltas agree to its rounding (2^-24 relative), whatever the weights' dtype.
        assert torch.allclose(kohya, delta, rtol=1e-6, atol=1e-6 * float(delta.abs().max())), name


def refuse(*args, **kwargs):
    raise AssertionError("a model was loaded before the bad LoRA file was refused")


@settings(
    max_examples=examples(100),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    mutations=st.tuples(tensor_mutation, metadata_mutation),
    corruption=st.one_of(st.none(), st.tuples(st.sampled_from(BYTES), st.integers(0, 1 << 20))),
    command=st.sampled_from(["export", "mix", "sample", "fuse"]),
)
def test_malformed_lora_files_end_in_a_clear_error_or_a_correct_export(
    seed_lora, tmp_path_factory, monkeypatch, mutations, corruption, command
):
    tensors, metadata = seed_lora
    for m in mutations:
        tensors, metadata = mutate(tensors, metadata, m)
    bad = any(m[0] in BAD_KINDS for m in mutations) or corruption is not None
    if not bad and corruption is None and command != "export":
        command = "export"  # a good file is checked by the export's arithmetic (no model loads per case)
    tmp = tmp_path_factory.mktemp("case")
    file = tmp / "pytorch_lora_weights.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(file), metadata=metadata)
    if corruption is not None:
        file.write_bytes(damage(file.read_bytes(), *corruption))
    why = f"{mutations} {corruption} via {command}"
    if not bad or command == "export":
        outcome = run_cli(["lora", "export", str(file), "--out", str(tmp / "k.safetensors")])
        judge(outcome, bad, why, lambda: check_export(tmp / "k.safetensors", tensors, metadata))
        return
    # Bad files through the other commands: refused before any model loads, and nothing written.
    monkeypatch.setattr(draft_core.models.loading, "load_model", refuse)
    argv = {
        "mix": ["lora", "mix", f"{file}:0.5", "--out", str(tmp / "mixed")],
        "sample": [
            "sample",
            "--model",
            "tiny-random",
            "--prompt",
            "x",
            "--steps",
            "2",
            "--n",
            "1",
            "--lora",
            str(file),
            "--out",
            str(tmp / "samples"),
        ],
        "fuse": ["lora", "fuse", "--model", "tiny-random", "--lora", str(file), "--out", str(tmp / "fused")],
    }[command]
    judge(run_cli(argv), bad, why)
    assert not any((tmp / name).exists() for name in ("mixed", "samples", "fused")), f"{why}: something was written"


PICKLES = ["good", "truncated", "random bytes", "a tensor", "a list", "an object", "empty dict", "nan"]


@settings(
    max_examples=examples(20),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kind=st.sampled_from(PICKLES), suffix=st.sampled_from([".pt", ".bin"]), cut=st.integers(1, 1 << 16))
def test_pt_and_bin_files_go_through_torch_load_weights_only(seed_lora, tmp_path_factory, kind, suffix, cut):
    import collections

    tensors, _ = seed_lora
    tmp = tmp_path_factory.mktemp("pickle")
    file = tmp / f"lora{suffix}"
    payload = {
        "a tensor": torch.ones(3),
        "a list": [1, 2],
        "an object": collections.OrderedDict(a=collections.Counter()),
        "empty dict": {},
        "nan": {k: v * math.nan for k, v in tensors.items()},
    }.get(kind, tensors)
    torch.save(payload, file)
    if kind == "truncated":
        file.write_bytes(file.read_bytes()[: cut % file.stat().st_size or 1])
    elif kind == "random bytes":
        file.write_bytes(bytes((cut * 31 + i * 17) % 256 for i in range(100 + cut % 1000)))
    outcome = run_cli(["lora", "export", str(file), "--out", str(tmp / "k.safetensors")])
    judge(outcome, kind != "good", f"{kind} {suffix}", lambda: check_export(tmp / "k.safetensors", tensors, {}))


def test_issue_cases_each_name_the_file_and_the_problem(seed_lora, tmp_path):
    """The issue's silent acceptances, one by one: the message names the file and what is wrong."""
    tensors, metadata = seed_lora
    cases = {
        "non-finite": (mutate(tensors, metadata, ("nonfinite", math.nan, 0, 0.5)), "non-finite value"),
        "integer": (mutate(tensors, metadata, ("dtype", "int64", 1)), "int64 values"),
        "only lora_A": (mutate(tensors, metadata, ("unpaired", "B", 6)), "would change nothing"),
        "3-D": (mutate(tensors, metadata, ("ndim", 3, 0)), "LoRA factors are 2-D"),
        "ranks": (mutate(tensors, metadata, ("rank", 0)), "do not match"),
        "metadata": (mutate(tensors, metadata, ("metadata", "r=mismatch")), "metadata says rank 3"),
    }
    for name, ((t, m), expected) in cases.items():
        file = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in t.items()}, str(file), metadata=m)
        outcome = run_cli(["lora", "export", str(file), "--out", str(tmp_path / "k.safetensors")])
        assert outcome.code == 2 and expected in outcome.err and str(file) in outcome.err, (name, outcome.err)
        assert not (tmp_path / "k.safetensors").exists()


def test_resume_refuses_a_checkpoint_lora_with_nan_before_loading_it(tmp_path):
    """--resume reads the checkpoint's lora.safetensors through the same checks (a checksum-valid NaN is still refused)."""
    from types import SimpleNamespace

    from draft_core.lora.validate import LoraFileError
    from draft_core.training.checkpoint import TrainingState, save_checkpoint
    from draft_core.training.restore import restore

    lora = {
        "down_blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, 4),
        "down_blocks.0.attn1.to_q.lora_B.weight": torch.full((4, 2), math.nan),
    }
    save_checkpoint(
        tmp_path / "checkpoints",
        TrainingState(step=3, lora=lora, optimizer={}, lr_scheduler={}, rng={"cpu": torch.zeros(2)}),
    )
    trainer = SimpleNamespace(
        run_dir=tmp_path,
        log=lambda m: None,
        acc=SimpleNamespace(num_processes=1, process_index=0),
        model=SimpleNamespace(device="cpu"),
    )
    with pytest.raises(
        LoraFileError,
        match=r"checkpoint '.*step-0*3': lora.safetensors is not a usable LoRA: '.*lora_B.weight' holds 8 non-finite",
    ):
        restore(trainer)
