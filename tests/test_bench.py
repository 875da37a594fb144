"""Benchmarks: run_bench on a tiny project, the FLOPs formula by hand, and the missing-accelerate error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dsm5lab.config import load_params
from dsm5lab.errors import UserError
from test_train import TINY

HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None


@pytest.fixture(scope="module")
def bench(tiny_prepared, tmp_path_factory):
    """run_bench, both shapes, one epoch on 24 of the 120 synthetic posts: bench.json, the dict or UserError, out."""
    from dsm5lab.bench import run_bench

    root = tiny_prepared
    out = tmp_path_factory.mktemp("bench") / "out"
    try:
        report, error = run_bench(load_params(root / "params.yaml", TINY), root, out, epochs=1, max_posts=24), None
    except UserError as exc:
        report, error = None, exc
    return json.loads((out / "bench.json").read_text()), report, error, out


@pytest.mark.parametrize("shape,layers,hidden", [("tiny", 1, 32), ("minilm", 6, 384)])
def test_bench_measures_our_loop_memory_predict_and_mfu(bench, shape, layers, hidden):
    data, _, _, out = bench
    assert set(data) == {"setup", "shapes"} and list(data["shapes"]) == ["tiny", "minilm"]
    assert data["setup"]["threads"] >= 1 and len(data["setup"]["load_avg_1m"]) == 2
    entry = data["shapes"][shape]
    assert set(entry) == {"setup", "train", "predict", "flops"}
    setup, ours, pred, flops = entry["setup"], entry["train"]["ours"], entry["predict"], entry["flops"]
    assert setup["backbone"] == shape and setup["epochs"] == 1 and setup["batch_size"] == 8
    assert setup["train_groups"] == 24 and setup["attention"] == "sdpa"
    assert setup["device"] == "cpu"  # CPU runs record gpu: null, so the device name comes from torch
    assert ours["samples_per_s"] > 0 and ours["tokens_per_s"] > ours["samples_per_s"]
    assert ours["groups"] == setup["train_groups"]  # one epoch, every group once
    assert 0 <= ours["pad_fraction"] < 1
    memory = ours["peak_memory"]
    assert memory["kind"] == "process_rss" and memory["peak_mb"] >= memory["start_mb"] > 0
    assert pred["groups"] == setup["val_groups"] > 0
    assert pred["groups_per_s"] > 0 and pred["tokens_per_s"] > 0
    plain = pred["plain_forward"]
    assert pred["ratio_tokens_per_s"] == pytest.approx(pred["tokens_per_s"] / plain["tokens_per_s"], rel=1e-12)
    assert (flops["n_layers"], flops["hidden"]) == (layers, hidden)
    assert flops["peak_flop_s"]["fp32"] > 0 and flops["peak_flop_s"]["bf16"] > 0
    assert 0 < flops["mfu"] <= 1
    assert flops["seq_len"] <= 64  # TINY windows are at most model.max_length tokens
    assert flops["flops_per_token"] == pytest.approx(
        6 * flops["n_nonembedding"] + 12 * flops["n_layers"] * flops["hidden"] * flops["seq_len"], rel=1e-12)
    achieved = ours["tokens_per_s"] * flops["flops_per_token"]
    assert flops["achieved_flop_s"] == pytest.approx(achieved, rel=1e-12)
    assert flops["mfu"] == pytest.approx(flops["achieved_flop_s"] / flops["peak_flop_s"]["fp32"], rel=1e-12)
    table = (out / "bench.md").read_text()
    assert f"## {shape}: " in table and "| samples_per_s |" in table and "| peak memory MB |" in table
    assert "MFU" in table and "ours / plain" in table


@pytest.mark.skipif(not HAS_ACCELERATE, reason="accelerate is not installed: no Trainer comparison to check")
@pytest.mark.parametrize("shape", ["tiny", "minilm"])
def test_bench_ratio_is_ours_over_trainer(bench, shape):
    data, report, error, _ = bench
    assert error is None and report == data
    entry = data["shapes"][shape]
    ours, hf, ratio = entry["train"]["ours"], entry["train"]["trainer"], entry["train"]["ratio"]
    assert hf["samples_per_s"] > 0 and hf["tokens_per_s"] > 0 and hf["peak_memory"]["peak_mb"] > 0
    assert hf["groups"] == entry["setup"]["train_groups"]  # one epoch: every group once
    for key in ("samples_per_s", "tokens_per_s"):
        assert ratio[key] == pytest.approx(ours[key] / hf[key], rel=0, abs=1e-9)


@pytest.mark.skipif(HAS_ACCELERATE, reason="accelerate is installed: the Trainer comparison runs")
def test_bench_without_accelerate_fails_clearly_after_writing_the_rest(bench):
    data, report, error, out = bench
    assert report is None and isinstance(error, UserError)
    message = str(error)
    assert "'accelerate'" in message and "\n" not in message and str(out / "bench.json") in message
    for entry in data["shapes"].values():
        assert "accelerate" in entry["train"]["trainer"]["error"] and entry["train"]["ratio"] is None


@pytest.mark.parametrize("cpu_isa", ["avx2", "native"])
def test_levers_each_retrain_side_by_side_with_a_baseline(tiny_prepared, tmp_path, cpu_isa):
    from dsm5lab.bench import LEVERS, run_bench

    root = tiny_prepared
    report = run_bench(load_params(root / "params.yaml", [*TINY, f"numerics.cpu_isa={cpu_isa}"]), root, tmp_path,
                       epochs=1, max_posts=16, shapes=("tiny",), levers=True)
    levers = report["shapes"]["tiny"]["levers"]
    assert list(levers) == list(LEVERS)
    assert levers["baseline"]["speedup"] == 1.0 and levers["baseline"]["val_score_delta"] == 0.0
    # under the AVX2 pin bf16 matmuls are ~300x slower: that lever is skipped with the reason, not run
    skipped = {"bf16_autocast"} if cpu_isa == "avx2" else set()
    assert {name for name, e in levers.items() if "skipped" in e} == skipped
    if skipped:
        assert "numerics.cpu_isa=native" in levers["bf16_autocast"]["skipped"]
    for name, entry in levers.items():
        if name in skipped:
            continue
        assert "error" not in entry, (name, entry)
        assert entry["samples_per_s"] > 0
        assert entry["speedup"] == pytest.approx(entry["samples_per_s"] / levers["baseline"]["samples_per_s"])
    # fp32 levers change kernels, not the maths: the model they train scores like the baseline
    for name in ("eager_attention", "fused_adamw", "foreach_adamw"):
        assert abs(levers[name]["val_score_delta"]) < 0.05, (name, levers[name])
    assert "| bf16_autocast |" in (tmp_path / "bench.md").read_text()


def test_bench_with_no_shape_is_one_line(tiny_prepared, tmp_path):
    from dsm5lab.bench import run_bench

    with pytest.raises(UserError, match="--shapes needs at least one backbone"):
        run_bench(load_params(tiny_prepared / "params.yaml", TINY), tiny_prepared, tmp_path, shapes=())


def test_trainer_comparison_names_the_missing_package(monkeypatch, tmp_path):
    from dsm5lab import bench as bench_module

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(UserError, match=r"needs the package 'accelerate', which is not installed"):
        bench_module.trainer_throughput(None, None, 8, 1, None, tmp_path)


def test_flops_per_token_on_a_hand_made_bert():
    from transformers import BertConfig, BertModel

    from dsm5lab.bench import encoder_shape, flops_per_token

    h, i, layers = 16, 40, 3
    config = BertConfig(vocab_size=100, hidden_size=h, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=i, max_position_embeddings=32, type_vocab_size=2)
    # per layer: q, k, v, o (h*h + h each), attention LayerNorm (2h), h->i (h*i + i), i->h (i*h + h),
    # output LayerNorm (2h)
    per_layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    # plus the pooler (h*h + h) and the embeddings' LayerNorm (2h); word, position and type tables are the
    # embedding parameters left out
    n = layers * per_layer + (h * h + h) + 2 * h
    assert n == 7768
    assert encoder_shape(BertModel(config)) == (n, layers, h)
    assert flops_per_token(n, layers, h, 20) == 6 * 7768 + 12 * 3 * 16 * 20 == 58128


def test_peak_size_shrinks_to_fit_the_budget():
    from dsm5lab.bench import peak_size

    fast, slow = 1 / 200e9, 1 / 2e9  # fp32 here, and bf16 under the AVX2 pin
    assert peak_size(fast, 2048, 5, 3.0) == 2048  # 6 x 17 GFLOP at 200 GFLOP/s: 0.5 s
    assert peak_size(slow, 2048, 5, 3.0) == 512  # 1024 would take 6 x 1.07 s
    assert peak_size(1.0, 2048, 5, 3.0) == 256  # never below 256


def test_matmul_peak_is_positive_and_finite():
    import math

    import torch

    from dsm5lab.bench import matmul_peak

    peak = matmul_peak(torch.device("cpu"), n=256, repeats=2)
    assert 0 < peak and math.isfinite(peak)


@pytest.mark.slow  # two benchmarks, each in a fresh process, one beside a job on every core
def test_under_load_runs_each_variant_in_its_own_process(tiny_prepared, tmp_path, monkeypatch):
    import shutil

    from dsm5lab.bench import LOAD_VARIANTS, run_under_load

    root = tmp_path / "p"
    shutil.copytree(tiny_prepared, root)
    monkeypatch.chdir(root)
    variants = {k: LOAD_VARIANTS[k] for k in ("alone", "loaded, OMP_WAIT_POLICY=PASSIVE")}
    report = run_under_load(Path("params.yaml"), TINY, tmp_path / "out", max_posts=8, variants=variants)
    alone, loaded = report["variants"]["alone"], report["variants"]["loaded, OMP_WAIT_POLICY=PASSIVE"]
    assert alone["vs_alone"] == 1.0 and not alone["other_job"] and loaded["other_job"]
    assert loaded["env"] == {"OMP_WAIT_POLICY": "PASSIVE"} and loaded["samples_per_s"] > 0
    assert loaded["vs_alone"] == pytest.approx(loaded["samples_per_s"] / alone["samples_per_s"])
    assert json.loads((tmp_path / "out/under_load.json").read_text()) == report
    assert "| loaded, OMP_WAIT_POLICY=PASSIVE |" in (tmp_path / "out/under_load.md").read_text()


def test_under_load_names_the_variant_that_failed(tiny_prepared, tmp_path, monkeypatch):
    from dsm5lab.bench import run_under_load

    monkeypatch.chdir(tmp_path)  # no stages/prepare here: the child bench fails
    (tmp_path / "params.yaml").write_text((tiny_prepared / "params.yaml").read_text())
    variants = {"alone": {"load": False, "env": {}, "sets": []}}
    with pytest.raises(UserError, match="bench --under-load: variant 'alone' failed: "):
        run_under_load(Path("params.yaml"), TINY, tmp_path / "out", max_posts=8, variants=variants)
    assert not (tmp_path / "out").exists()


SMALL_PIPELINE = ["data.synthetic.n_posts=60", "model.tiny.num_layers=1", "model.max_length=64", "model.stride=16",
                  "model.max_chunks=1", "train.epochs=1", "hpo.n_trials=1", "evaluate.bootstrap_resamples=20"]


@pytest.mark.slow  # the whole pipeline through dvc, small
def test_stage_timing_runs_every_stage_in_a_scratch_clone(tmp_path):
    from conftest import ROOT
    from dsm5lab.bench import run_stage_timing

    before = sorted(p.name for p in (ROOT / "metrics").iterdir())
    report = run_stage_timing(ROOT, tmp_path, SMALL_PIPELINE)
    assert list(report["stages"]) == ["prepare", "study", "hpo", "train", "evaluate", "spread", "retention"]
    assert all(v > 0 for v in report["stages"].values())
    assert report["total_seconds"] == pytest.approx(sum(report["stages"].values()))
    assert "| hpo |" in (tmp_path / "stages.md").read_text()
    assert sorted(p.name for p in (ROOT / "metrics").iterdir()) == before


def test_stage_timing_names_the_stage_that_failed(tmp_path):
    from conftest import ROOT
    from dsm5lab.bench import run_stage_timing

    with pytest.raises(UserError, match=r"bench --stages: stage 'prepare' failed: .*data\.csv_dir"):
        run_stage_timing(ROOT, tmp_path, ["data.source=csv", f"data.csv_dir={tmp_path / 'missing'}"])
    assert not (tmp_path / "stages.json").exists()
    with pytest.raises(UserError, match="no dvc.yaml in"):
        run_stage_timing(tmp_path, tmp_path / "out")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(UserError, match="is not a git working tree"):
        run_stage_timing(tmp_path, tmp_path / "out")


def test_stage_timing_uses_the_params_file_it_is_given(tmp_path):
    import yaml

    from conftest import ROOT, default_params
    from dsm5lab.bench import run_stage_timing

    raw = default_params()
    raw["data"].update(source="csv", csv_dir=str(tmp_path / "missing"))
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(UserError, match=r"stage 'prepare' failed: .*data\.csv_dir"):
        run_stage_timing(ROOT, tmp_path / "out", params_file=other)


@pytest.mark.parametrize("args,fragment", [
    (["--stages", "--under-load"], "bench --stages: does not take --stages"),
    (["--stages", "--levers"], "bench --stages: does not take --levers"),
    (["--stages", "--max-posts", "8"], "bench --stages: does not take --max-posts"),
    (["--under-load", "--epochs", "2", "--shapes", "minilm"], "bench --under-load: does not take --epochs, --shapes"),
])
def test_bench_modes_refuse_options_they_would_ignore(workdir, cli, args, fragment):
    result = cli("bench", *args)
    assert result.exit_code == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (workdir / "reports").exists()
