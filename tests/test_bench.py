"""Benchmarks: run_bench on a tiny project, the FLOPs formula by hand, and the missing-accelerate error."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import new_project
from dsm5lab.config import load_params
from dsm5lab.errors import UserError
from test_train import TINY, sets

HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """run_bench, one epoch on 120 synthetic posts: bench.json, the returned dict or UserError, out dir."""
    from dsm5lab.bench import run_bench

    root = tmp_path_factory.mktemp("bench")
    new_project(root, "prepare", *sets(TINY))
    out = root / "out"
    try:
        report, error = run_bench(load_params(root / "params.yaml", TINY), root, out, epochs=1), None
    except UserError as exc:
        report, error = None, exc
    return json.loads((out / "bench.json").read_text()), report, error, out


def test_bench_measures_our_loop_predict_and_mfu(bench):
    data, _, _, out = bench
    assert set(data) == {"setup", "train", "predict", "flops"}
    setup, ours, pred, flops = data["setup"], data["train"]["ours"], data["predict"], data["flops"]
    assert setup["epochs"] == 1 and setup["batch_size"] == 8 and setup["threads"] >= 1
    assert setup["device"] == "cpu"  # CPU runs record gpu: null, so the device name comes from torch
    assert ours["samples_per_s"] > 0 and ours["tokens_per_s"] > ours["samples_per_s"]
    assert ours["groups"] == setup["train_groups"]  # one epoch, every group once
    assert 0 <= ours["pad_fraction"] < 1
    assert pred["groups"] == setup["val_groups"] > 0
    assert pred["groups_per_s"] > 0 and pred["tokens_per_s"] > 0
    assert flops["peak_flop_s"]["fp32"] > 0
    assert 0 < flops["mfu"] <= 1
    assert flops["seq_len"] <= 64  # TINY windows are at most model.max_length tokens
    assert flops["flops_per_token"] == pytest.approx(
        6 * flops["n_nonembedding"] + 12 * flops["n_layers"] * flops["hidden"] * flops["seq_len"], rel=1e-12)
    achieved = ours["tokens_per_s"] * flops["flops_per_token"]
    assert flops["achieved_flop_s"] == pytest.approx(achieved, rel=1e-12)
    assert flops["mfu"] == pytest.approx(flops["achieved_flop_s"] / flops["peak_flop_s"]["fp32"], rel=1e-12)
    table = (out / "bench.md").read_text()
    assert "| samples_per_s |" in table and "MFU" in table


@pytest.mark.skipif(not HAS_ACCELERATE, reason="accelerate is not installed: no Trainer comparison to check")
def test_bench_ratio_is_ours_over_trainer(bench):
    data, report, error, _ = bench
    assert error is None and report == data
    ours, hf, ratio = data["train"]["ours"], data["train"]["trainer"], data["train"]["ratio"]
    assert hf["samples_per_s"] > 0 and hf["tokens_per_s"] > 0
    assert hf["groups"] == data["setup"]["train_groups"]  # one epoch: every group once
    for key in ("samples_per_s", "tokens_per_s"):
        assert ratio[key] == pytest.approx(ours[key] / hf[key], rel=0, abs=1e-9)


@pytest.mark.skipif(HAS_ACCELERATE, reason="accelerate is installed: the Trainer comparison runs")
def test_bench_without_accelerate_fails_clearly_after_writing_the_rest(bench):
    data, report, error, out = bench
    assert report is None and isinstance(error, UserError)
    message = str(error)
    assert "'accelerate'" in message and "\n" not in message and str(out / "bench.json") in message
    assert "accelerate" in data["train"]["trainer"]["error"] and data["train"]["ratio"] is None


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


def test_matmul_peak_is_positive_and_finite():
    import math

    import torch

    from dsm5lab.bench import matmul_peak

    peak = matmul_peak(torch.device("cpu"), n=256, repeats=2)
    assert 0 < peak and math.isfinite(peak)
