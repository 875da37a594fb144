"""Benchmarks a user runs: our training loop against the Hugging Face Trainer, predict throughput, and MFU.

Both trainers see the same backbone, encoded groups, batch size, epochs, optimizer settings and seed in one
process, so their ratio is measured on one machine at one time. Results go to bench.json and bench.md.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dsm5lab import atomic, layout
from dsm5lab.config import Params, apply_overrides, validate
from dsm5lab.errors import UserError

log = logging.getLogger("dsm5lab.bench")

FLOPS_FORMULA = ("training FLOPs/token = 6*N_nonembedding + 12*n_layers*hidden*seq_len (Kaplan et al. 2020, "
                 "with both attention matmuls counted as in Chowdhery et al. 2022, App. B); seq_len = mean "
                 "non-pad window length trained; only non-pad tokens count")
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


class _NullTracker:
    """fit() logs to this; a benchmark keeps nothing but the throughput."""

    def event(self, *args, **kwargs) -> None:
        pass

    def log_params(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, *args, **kwargs) -> None:
        pass


def flops_per_token(n_nonembedding: int, n_layers: int, hidden: int, seq_len: float) -> float:
    """Training FLOPs per token (forward + backward), see FLOPS_FORMULA."""
    return 6.0 * n_nonembedding + 12.0 * n_layers * hidden * seq_len


def encoder_shape(encoder: torch.nn.Module) -> tuple[int, int, int]:
    """(non-embedding parameters, layers, hidden size) of a transformers encoder."""
    embedded = {id(p) for m in encoder.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    n = sum(p.numel() for p in encoder.parameters() if id(p) not in embedded)
    return n, int(encoder.config.num_hidden_layers), int(encoder.config.hidden_size)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                repeats: int = 5) -> float:
    """Best FLOP/s of a few n x n torch.mm on `device` (2*n^3 FLOPs each, one warm-up call first)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        tick = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - tick)
    return 2.0 * n**3 / best


def _bench_params(params: Params, epochs: int | None) -> Params:
    """Every epoch runs (no early stop), validation once per epoch, batches built inline on both sides."""
    e = epochs if epochs is not None else params.train.epochs
    sets = [f"train.epochs={e}", f"train.early_stopping.patience={e + 1}", "train.eval_every_steps=0",
            "train.num_workers=0"]
    return validate(apply_overrides(params.model_dump(), sets), source="bench")


def _select_ids(prepared: Path, max_posts: int | None, seed: int):
    """`max_posts` train posts drawn with the seed and a val draw of the same share, or (None, None)."""
    if max_posts is None:
        return None, None
    if max_posts < 1:
        raise UserError(f"bench: max_posts must be at least 1 (got {max_posts})")
    from dsm5lab.training.run import load_splits

    train, val, _ = load_splits(prepared, None, None)
    n_val = max(1, math.ceil(max_posts * len(val) / len(train)))
    pick = lambda df, n: df.sample(n=min(n, len(df)), random_state=seed)["post_id"].tolist()  # noqa: E731
    return pick(train, max_posts), pick(val, n_val)


def _our_padding(run, epochs: int) -> float:
    """Share of padded token slots in the batches fit() builds (its epoch order, replayed)."""
    real = cells = 0
    for epoch in range(epochs):
        for idx in run.epoch_order(epoch):
            lengths = [len(w.input_ids) for i in idx for w in run.train_groups[i].windows]
            real, cells = real + sum(lengths), cells + len(lengths) * max(lengths)
    return 1.0 - real / cells


def _require_accelerate() -> None:
    if importlib.util.find_spec("accelerate") is None:  # transformers' Trainer cannot start without it
        raise UserError("bench: the Hugging Face Trainer comparison needs the package 'accelerate', which is "
                        "not installed (pip install 'accelerate>=1.1.0')")


def trainer_throughput(params: Params, run, micro: int, accum: int, device: torch.device, workdir: Path) -> dict:
    """Train `run.model` with transformers.Trainer; groups/s and non-pad tokens/s over trainer.train()."""
    _require_accelerate()
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from dsm5lab.training.encoding import collate
    from dsm5lab.training.multitask_loss import multitask_loss

    t = params.train

    class Wrapped(torch.nn.Module):
        accepts_loss_kwargs = False  # the loss is a per-batch mean: the Trainer divides it for accumulation

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, **batch):
            return {"loss": multitask_loss(self.model(batch), batch, self.model, params, run.weights)[0]}

    class Groups(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(run.train_groups)

        def __getitem__(self, i: int):
            return run.train_groups[i]

    counts = {"groups": 0, "tokens": 0, "cells": 0}

    def counting_collate(groups):
        batch = collate(groups, run.pad_id, run.evidence_kind, run.model.spec.max_span_tokens)
        counts["groups"] += len(groups)
        counts["tokens"] += int(batch["attention_mask"].sum())
        counts["cells"] += batch["attention_mask"].numel()
        return batch

    total_steps = math.ceil(math.ceil(len(run.train_groups) / micro) / accum) * t.epochs
    warmup = int(round(t.warmup_ratio * total_steps))  # fit's count; transformers 5 has no warmup_ratio
    args = TrainingArguments(
        output_dir=str(workdir), per_device_train_batch_size=micro, gradient_accumulation_steps=accum,
        num_train_epochs=t.epochs, learning_rate=t.learning_rate, lr_scheduler_type=SCHEDULES[t.scheduler],
        warmup_steps=warmup, max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay, optim="adamw_torch",
        seed=params.seed, bf16=t.precision == "bf16", fp16=t.precision == "fp16", report_to=[],
        save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, use_cpu=device.type != "cuda", remove_unused_columns=False,
    )
    trainer = Trainer(model=Wrapped(run.model), args=args, train_dataset=Groups(),
                      data_collator=counting_collate)
    trainer.remove_callback(PrinterCallback)  # it prints the final train metrics to stdout
    tick = time.perf_counter()
    trainer.train()
    _sync(device)
    secs = time.perf_counter() - tick
    return {"samples_per_s": counts["groups"] / secs, "tokens_per_s": counts["tokens"] / secs,
            "seconds": secs, "groups": counts["groups"], "tokens": counts["tokens"],
            "pad_fraction": 1 - counts["tokens"] / counts["cells"],
            "sampler": "uniform shuffle (RandomSampler)", "optimizer": "AdamW (transformers no-decay groups)"}


def predict_throughput(params: Params, run, device: torch.device, repeats: int = 2) -> dict:
    """Inference only (no loss): best of `repeats` full passes of predict() over the val groups.

    Timed on the weights training ended with: the cost of a pass does not depend on their values.
    """
    from dsm5lab.training.inference import predict

    t = params.train
    best = math.inf
    for _ in range(repeats):
        tick = time.perf_counter()
        predict(run.model, run.val_groups, t.eval_batch_size, run.pad_id, device, t.precision)
        _sync(device)
        best = min(best, time.perf_counter() - tick)
    tokens = sum(g.n_tokens for g in run.val_groups)
    return {"split": "val", "groups": len(run.val_groups), "tokens": tokens, "seconds": best,
            "batch_size": t.eval_batch_size, "groups_per_s": len(run.val_groups) / best,
            "tokens_per_s": tokens / best}


def flops_report(encoder, groups, tokens_per_s: float, precision: str, device: torch.device) -> dict:
    """Achieved training FLOP/s from tokens/s and FLOPS_FORMULA, against a matmul peak measured here."""
    n, layers, hidden = encoder_shape(encoder)
    seq_len = float(np.mean([len(w.input_ids) for g in groups for w in g.windows]))
    per_token = flops_per_token(n, layers, hidden, seq_len)
    peaks = {"fp32": matmul_peak(device, torch.float32)}
    if device.type == "cuda" or precision != "fp32":
        peaks["bf16"] = matmul_peak(device, torch.bfloat16)
    dtype = "fp32" if precision == "fp32" else "bf16"
    achieved = tokens_per_s * per_token
    return {"formula": FLOPS_FORMULA, "n_nonembedding": n, "n_layers": layers, "hidden": hidden,
            "seq_len": seq_len, "flops_per_token": per_token, "achieved_flop_s": achieved,
            "peak_flop_s": peaks, "peak_dtype": dtype, "peak_method": "best of 5 torch.mm 2048x2048",
            "mfu": achieved / peaks[dtype]}


def run_bench(params: Params, root: Path, out_dir: Path, *, epochs: int | None = None,
              max_posts: int | None = None) -> dict:
    """Measure training (ours vs Trainer), predict throughput and MFU; write bench.json and bench.md.

    One run is built: our loop trains it, predict is timed on it, then the model goes back to its
    initial weights and the Trainer trains it, so both start from the same model and data.
    """
    import transformers

    from dsm5lab.training.loop import fit
    from dsm5lab.training.run import RunPaths, build_run

    params = _bench_params(params, epochs)
    t = params.train
    load_before = os.getloadavg()[0]  # other processes on the machine skew every number here
    prepared, out_dir = Path(root) / layout.PREPARED, Path(out_dir)
    train_ids, val_ids = _select_ids(prepared, max_posts, params.seed)
    error = None
    with tempfile.TemporaryDirectory(prefix="dsm5lab-bench-") as tmp:
        run = build_run(params, RunPaths(prepared=prepared, checkpoints=Path(tmp) / "ckpt"), train_ids=train_ids,
                        val_ids=val_ids)
        device = run.device
        # on the CPU: a GPU copy would eat the memory the batch probe measured
        initial = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()}
        log.info("bench: training with our loop")
        result = fit(run, _NullTracker())
        tp = result.throughput
        micro, accum = tp["micro_batch"], tp["accumulation"]
        ours = {"samples_per_s": tp["samples_per_s"], "tokens_per_s": tp["tokens_per_s"],
                "seconds": tp["train_seconds"], "groups": round(tp["samples_per_s"] * tp["train_seconds"]),
                "tokens": round(tp["tokens_per_s"] * tp["train_seconds"]),
                "sampler": "length-bucketed (bucket_batches)",
                "pad_fraction": _our_padding(run, t.epochs),
                "optimizer": "AdamW (dsm5lab.training.optim groups)"}
        log.info("bench: predict throughput")
        pred = predict_throughput(params, run, device)
        log.info("bench: training with transformers.Trainer")
        try:
            _require_accelerate()
            run.model.load_state_dict(initial)
            run.optimizer.state.clear()  # our AdamW moments would sit beside the Trainer's
            if device.type == "cuda":
                torch.cuda.empty_cache()
            trainer = trainer_throughput(params, run, micro, accum, device, Path(tmp) / "trainer")
        except UserError as exc:
            trainer, error = {"error": str(exc)}, exc
    m = params.model
    setup = {"backbone": m.backbone, "task": t.task, "batch_size": t.batch_size, "micro_batch": micro,
             "accumulation": accum, "epochs": t.epochs, "train_groups": len(run.train_groups),
             "val_groups": len(run.val_groups), "max_length": m.max_length, "max_chunks": m.max_chunks,
             "precision": t.precision, "deterministic": t.deterministic,
             "device": result.system.get("gpu") or str(device), "threads": torch.get_num_threads(),
             "torch": torch.__version__, "transformers": transformers.__version__, "seed": params.seed,
             "order": "ours, then predict, then Trainer, in one process"}
    flops = flops_report(run.model.encoder, run.train_groups, ours["tokens_per_s"], t.precision, device)
    report = {"setup": setup, "train": {"ours": ours, "trainer": trainer, "ratio": None}, "predict": pred,
              "flops": flops}
    setup["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    if error is None:
        report["train"]["ratio"] = {k: ours[k] / trainer[k] for k in ("samples_per_s", "tokens_per_s")}
    atomic.write_json(out_dir / "bench.json", report)
    atomic.write_text(out_dir / "bench.md", _markdown(report))
    if error is not None:
        raise UserError(f"{error}; the other measurements are in {out_dir / 'bench.json'}")
    return report


def _markdown(r: dict) -> str:
    """A short table of bench.json."""
    s, p, f = r["setup"], r["predict"], r["flops"]
    ours, hf, ratio = r["train"]["ours"], r["train"]["trainer"], r["train"]["ratio"] or {}

    def cell(value, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    lines = [f"# Benchmark: {s['backbone']}, {s['task']}, batch {s['batch_size']}, {s['epochs']} epoch(s), "
             f"{s['train_groups']} train groups, {s['device']}, {s['threads']} threads, "
             f"load average {s['load_avg_1m'][0]} -> {s['load_avg_1m'][1]}", "",
             "| training | ours | Trainer | ours / Trainer |", "| --- | --- | --- | --- |"]
    for key, fmt in (("samples_per_s", ",.1f"), ("tokens_per_s", ",.0f"), ("pad_fraction", ".3f")):
        lines.append(f"| {key} | {cell(ours[key], fmt)} | {cell(hf.get(key), fmt)} "
                     f"| {cell(ratio.get(key), '.3f')} |")
    peak = f["peak_flop_s"][f["peak_dtype"]]
    lines += ["", "Samplers differ: ours batches groups of similar length, the Trainer shuffles uniformly; "
              "pad_fraction is the share of padded token slots. Tokens count non-pad tokens only.",
              f"Predict ({p['split']}, {p['groups']} groups, batch {p['batch_size']}, no loss): "
              f"{p['groups_per_s']:,.1f} groups/s, {p['tokens_per_s']:,.0f} tokens/s.",
              f"FLOPs: {f['flops_per_token']:,.0f} per token, "
              f"{f['achieved_flop_s'] / 1e9:,.2f} GFLOP/s achieved, "
              f"{f['peak_dtype']} matmul peak {peak / 1e9:,.1f} GFLOP/s, MFU {f['mfu']:.4f}. {f['formula']}."]
    if "error" in hf:
        lines.append(f"Trainer not run: {hf['error']}")
    return "\n".join(lines) + "\n"
