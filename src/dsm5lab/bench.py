"""Benchmarks a user runs: our training loop against the Hugging Face Trainer, predict throughput, and MFU.

For each shape (the random-init `tiny` and the pretrained 6x384 MiniLM) both trainers see the same backbone,
encoded groups, batch size, epochs, optimizer settings and seed in one process, so their ratio is measured on
one machine at one time; peak memory is taken per phase, and predict is set against a plain forward loop of
the encoder over the same batches. `levers` retrains the shape with one speed lever changed at a time (eager
attention instead of SDPA, bf16 autocast, fused / foreach AdamW), side by side with a baseline run.
Results go to bench.json and bench.md.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import tempfile
import threading
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
SHAPES = ("tiny", "minilm")  # the random-init default and the pretrained 6x384 encoder shipped on PyPI
# lever -> what changes against the baseline run (params overrides, encoder attention, AdamW keyword arguments)
LEVERS: dict[str, dict] = {
    "baseline": {},
    "eager_attention": {"attention": "eager"},
    "bf16_autocast": {"sets": ["train.precision=bf16"]},
    "fused_adamw": {"adamw": {"fused": True}},
    "foreach_adamw": {"adamw": {"foreach": True}},
}


class _NullTracker:
    """fit() logs to this; a benchmark keeps nothing but the throughput."""

    def event(self, *args, **kwargs) -> None:
        pass

    def log_params(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, *args, **kwargs) -> None:
        pass

    def set_tags(self, *args, **kwargs) -> None:
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


class PeakMemory:
    """Peak memory over a `with` block: CUDA max allocated on a GPU, else the process RSS sampled every 10 ms."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self.start = device, 0, 0
        self._stop = threading.Event()

    def _sample(self, proc) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        proc = psutil.Process()
        self.start = self.peak = proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, args=(proc,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()

    def report(self) -> dict:
        kind = "cuda_max_allocated" if self.device.type == "cuda" else "process_rss"
        return {"kind": kind, "peak_mb": self.peak / 2**20, "start_mb": self.start / 2**20,
                "increase_mb": (self.peak - self.start) / 2**20}


def peak_size(seconds_per_flop: float, n: int, repeats: int, budget_s: float) -> int:
    """n halved (not below 256) until repeats + 1 matmuls of n x n fit budget_s at seconds_per_flop."""
    while n > 256 and seconds_per_flop * 2.0 * n**3 * (repeats + 1) > budget_s:
        n //= 2
    return n


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                repeats: int = 5, budget_s: float = 3.0) -> float:
    """Best FLOP/s of a few n x n torch.mm on `device` (2*n^3 FLOPs each, one warm-up call first).

    n is halved (down to 256) while the repeats would take longer than budget_s: a dtype without a fast
    kernel here (bf16 under an AVX2 pin runs at about 2 GFLOP/s) would otherwise cost minutes.
    """
    def once(a, b) -> float:
        tick = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        return time.perf_counter() - tick

    small = torch.randn(256, 256, device=device, dtype=dtype)
    once(small, small)
    n = peak_size(once(small, small) / (2.0 * 256**3), n, repeats, budget_s)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    once(a, b)
    best = min(once(a, b) for _ in range(repeats))
    return 2.0 * n**3 / best


def _bench_params(params: Params, epochs: int | None, backbone: str | None = None) -> Params:
    """Every epoch runs (no early stop), validation once per epoch, batches built inline on both sides."""
    e = epochs if epochs is not None else params.train.epochs
    sets = [f"train.epochs={e}", f"train.early_stopping.patience={e + 1}", "train.eval_every_steps=0",
            "train.num_workers=0", *([f"model.backbone={backbone}"] if backbone else [])]
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


def plain_forward_throughput(params: Params, run, device: torch.device, repeats: int = 2) -> dict:
    """The encoder alone (a plain transformers forward) over the batches predict() builds: best of `repeats`."""
    from dsm5lab.device import autocast_for, to_device
    from dsm5lab.training.encoding import collate
    from dsm5lab.training.inference import batches_by_windows

    t, encoder = params.train, run.model.encoder
    batches = [collate([run.val_groups[i] for i in idx], run.pad_id, None, run.model.spec.max_span_tokens)
               for idx in batches_by_windows(run.val_groups, t.eval_batch_size, None)]
    encoder.eval()
    best = math.inf
    with torch.inference_mode():
        for _ in range(repeats):
            tick = time.perf_counter()
            for batch in batches:
                b = to_device(batch, device)
                with autocast_for(device, t.precision):
                    encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            _sync(device)
            best = min(best, time.perf_counter() - tick)
    tokens = sum(g.n_tokens for g in run.val_groups)
    return {"what": "encoder(input_ids, attention_mask) only, same batches, inference_mode", "seconds": best,
            "groups_per_s": len(run.val_groups) / best, "tokens_per_s": tokens / best}


def flops_report(encoder, groups, tokens_per_s: float, precision: str, device: torch.device) -> dict:
    """Achieved training FLOP/s from tokens/s and FLOPS_FORMULA, against a matmul peak measured here."""
    n, layers, hidden = encoder_shape(encoder)
    seq_len = float(np.mean([len(w.input_ids) for g in groups for w in g.windows]))
    per_token = flops_per_token(n, layers, hidden, seq_len)
    peaks = {"fp32": matmul_peak(device, torch.float32), "bf16": matmul_peak(device, torch.bfloat16)}
    dtype = "fp32" if precision == "fp32" else "bf16"
    achieved = tokens_per_s * per_token
    return {"formula": FLOPS_FORMULA, "n_nonembedding": n, "n_layers": layers, "hidden": hidden,
            "seq_len": seq_len, "flops_per_token": per_token, "achieved_flop_s": achieved,
            "peak_flop_s": peaks, "peak_dtype": dtype,
            "peak_method": "best of 5 torch.mm n x n, n = 2048 or less to fit 3 s",
            "mfu": achieved / peaks[dtype]}


def _ours(run, result, epochs: int) -> dict:
    tp = result.throughput
    return {"samples_per_s": tp["samples_per_s"], "tokens_per_s": tp["tokens_per_s"],
            "seconds": tp["train_seconds"], "groups": round(tp["samples_per_s"] * tp["train_seconds"]),
            "tokens": round(tp["tokens_per_s"] * tp["train_seconds"]), "sampler": "length-bucketed (bucket_batches)",
            "pad_fraction": _our_padding(run, epochs), "optimizer": "AdamW (dsm5lab.training.optim groups)"}


def _val_score(result, params: Params) -> float | None:
    """The early-stopping metric at the best validation (what the gate's val keys and HPO compare)."""
    score = (result.best or {}).get(params.train.early_stopping.metric)
    return None if score is None else float(score)


def warm_up(run, params: Params, batches: int = 2) -> None:
    """Forward and backward over the first micro-batches, gradients and RNG put back: the first phase timed
    (our loop) then no longer pays one-off costs (allocations, thread pools, kernel choice) that the
    phases after it would skip."""
    from dsm5lab.device import autocast_for, to_device
    from dsm5lab.training.encoding import collate
    from dsm5lab.training.multitask_loss import multitask_loss

    rng = torch.get_rng_state()
    run.model.train()
    for idx in run.epoch_order(0)[:batches]:
        batch = to_device(collate([run.train_groups[i] for i in idx], run.pad_id, run.evidence_kind,
                                  run.model.spec.max_span_tokens), run.device)
        with autocast_for(run.device, params.train.precision):
            loss, _ = multitask_loss(run.model(batch), batch, run.model, params, run.weights)
        loss.backward()
    run.model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    _sync(run.device)


def bench_shape(params: Params, prepared: Path, tmp: Path, train_ids, val_ids) -> tuple[dict, UserError | None]:
    """One shape: our loop (with its peak memory), predict against a plain forward, then the Trainer."""
    from dsm5lab.training.loop import fit
    from dsm5lab.training.run import RunPaths, build_run

    t = params.train
    run = build_run(params, RunPaths(prepared=prepared, checkpoints=tmp / "ckpt"), train_ids=train_ids,
                    val_ids=val_ids)
    device = run.device
    # on the CPU: a GPU copy would eat the memory the batch probe measured
    initial = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()}
    warm_up(run, params)
    log.info("bench %s: training with our loop", params.model.backbone)
    with PeakMemory(device) as mem:
        result = fit(run, _NullTracker())
    ours = {**_ours(run, result, t.epochs), "peak_memory": mem.report(), "val_score": _val_score(result, params)}
    micro, accum = result.throughput["micro_batch"], result.throughput["accumulation"]
    log.info("bench %s: predict throughput", params.model.backbone)
    pred = predict_throughput(params, run, device)
    plain = plain_forward_throughput(params, run, device)
    pred.update(plain_forward=plain, ratio_tokens_per_s=pred["tokens_per_s"] / plain["tokens_per_s"])
    log.info("bench %s: training with transformers.Trainer", params.model.backbone)
    error = None
    try:
        _require_accelerate()
        run.model.load_state_dict(initial)
        run.optimizer.state.clear()  # our AdamW moments would sit beside the Trainer's
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with PeakMemory(device) as mem:
            trainer = trainer_throughput(params, run, micro, accum, device, tmp / "trainer")
        trainer["peak_memory"] = mem.report()
    except UserError as exc:
        trainer, error = {"error": str(exc)}, exc
    m = params.model
    setup = {"backbone": m.backbone, "task": t.task, "batch_size": t.batch_size, "micro_batch": micro,
             "accumulation": accum, "epochs": t.epochs, "train_groups": len(run.train_groups),
             "val_groups": len(run.val_groups), "max_length": m.max_length, "max_chunks": m.max_chunks,
             "precision": t.precision, "attention": run.model.encoder.config._attn_implementation,
             "deterministic": t.deterministic, "device": result.system.get("gpu") or str(device)}
    flops = flops_report(run.model.encoder, run.train_groups, ours["tokens_per_s"], t.precision, device)
    ratio = None if error else {k: ours[k] / trainer[k] for k in ("samples_per_s", "tokens_per_s")}
    return {"setup": setup, "train": {"ours": ours, "trainer": trainer, "ratio": ratio}, "predict": pred,
            "flops": flops}, error


def bench_levers(params: Params, prepared: Path, tmp: Path, train_ids, val_ids) -> dict:
    """Our loop once per lever, each from a fresh run (same seed, data and batches), in LEVERS order."""
    from dsm5lab.device import pick_device
    from dsm5lab.training.loop import fit
    from dsm5lab.training.run import RunPaths, build_run

    out: dict[str, dict] = {}
    for name, lever in LEVERS.items():
        p = validate(apply_overrides(params.model_dump(), lever.get("sets", [])), source="bench")
        if p.train.precision == "bf16" and pick_device().type == "cpu" and p.numerics.cpu_isa != "native":
            # measured: about 300x slower matmuls, so minutes per epoch for a number known in advance
            out[name] = {"skipped": f"numerics.cpu_isa {p.numerics.cpu_isa} holds oneDNN to that ISA, which has "
                                    "no fast bf16 matmul on a CPU; measure with --set numerics.cpu_isa=native"}
            continue
        log.info("bench %s: lever %s", p.model.backbone, name)
        try:
            run = build_run(p, RunPaths(prepared=prepared, checkpoints=tmp / f"lever-{name}"),
                            train_ids=train_ids, val_ids=val_ids, adamw=lever.get("adamw"))
            if "attention" in lever:
                run.model.encoder.set_attn_implementation(lever["attention"])
            result = fit(run, _NullTracker())
        except (RuntimeError, ValueError, TypeError) as exc:  # a lever this torch/CPU does not offer
            out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            continue
        tp = result.throughput
        out[name] = {"samples_per_s": tp["samples_per_s"], "tokens_per_s": tp["tokens_per_s"],
                     "seconds": tp["train_seconds"], "val_score": _val_score(result, p)}
    base = out["baseline"]
    for entry in out.values():
        if "samples_per_s" in entry and "samples_per_s" in base:
            entry["speedup"] = entry["samples_per_s"] / base["samples_per_s"]
            if entry["val_score"] is not None and base["val_score"] is not None:
                entry["val_score_delta"] = entry["val_score"] - base["val_score"]
    return out


def run_bench(params: Params, root: Path, out_dir: Path, *, epochs: int | None = None,
              max_posts: int | None = None, shapes: tuple[str, ...] = SHAPES, levers: bool = False) -> dict:
    """Measure each shape (ours vs Trainer, memory, predict, MFU; with `levers`, each lever); write the report.

    Per shape one run is built: our loop trains it, predict is timed on it, then the model goes back to its
    initial weights and the Trainer trains it, so both start from the same model and data.
    """
    import transformers

    if not shapes:
        raise UserError("bench: --shapes needs at least one backbone (for example tiny,minilm)")
    load_before = os.getloadavg()[0]  # other processes on the machine skew every number here
    prepared, out_dir = Path(root) / layout.PREPARED, Path(out_dir)
    report: dict = {"setup": {}, "shapes": {}}
    errors: list[UserError] = []
    with tempfile.TemporaryDirectory(prefix="dsm5lab-bench-") as tmp:
        for shape in shapes:
            p = _bench_params(params, epochs, shape)
            train_ids, val_ids = _select_ids(prepared, max_posts, p.seed)
            entry, error = bench_shape(p, prepared, Path(tmp) / shape, train_ids, val_ids)
            if levers:
                entry["levers"] = bench_levers(p, prepared, Path(tmp) / shape, train_ids, val_ids)
            report["shapes"][shape] = entry
            errors += [error] if error else []
    report["setup"] = {"shapes": list(shapes), "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "transformers": transformers.__version__, "seed": params.seed, "max_posts": max_posts,
                       "cpu": _cpu_name(), "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                       "order": "per shape: a warm-up (2 micro-batches, not timed), ours, then predict, then Trainer "
                      "(then levers), in one process"}
    atomic.write_json(out_dir / "bench.json", report)
    atomic.write_text(out_dir / "bench.md", _markdown(report))
    if errors:
        raise UserError(f"{errors[0]}; the other measurements are in {out_dir / 'bench.json'}")
    return report


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _markdown(r: dict) -> str:
    """A short table per shape of bench.json."""
    s = r["setup"]
    lines = [f"# Benchmark: {', '.join(s['shapes'])}; {s['threads']} threads on {s['cpu']}, "
             f"load average {s['load_avg_1m'][0]} -> {s['load_avg_1m'][1]}", ""]
    for name, shape in r["shapes"].items():
        lines += _shape_markdown(name, shape)
    lines += ["Samplers differ: ours batches groups of similar length, the Trainer shuffles uniformly; "
              "pad_fraction is the share of padded token slots. Tokens count non-pad tokens only. Peak memory is "
              "the process RSS on a CPU (it includes what earlier phases left allocated), CUDA max allocated on a "
              f"GPU. FLOPs: {FLOPS_FORMULA}."]
    return "\n".join(lines) + "\n"


def _shape_markdown(name: str, r: dict) -> list[str]:
    s, p, f = r["setup"], r["predict"], r["flops"]
    ours, hf, ratio = r["train"]["ours"], r["train"]["trainer"], r["train"]["ratio"] or {}

    def cell(value, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    lines = [f"## {name}: {s['task']}, batch {s['batch_size']}, {s['epochs']} epoch(s), {s['train_groups']} train "
             f"groups, max_length {s['max_length']}, {s['precision']}, {s['attention']} attention, {s['device']}", "",
             "| training | ours | Trainer | ours / Trainer |", "| --- | --- | --- | --- |"]
    for key, fmt in (("samples_per_s", ",.1f"), ("tokens_per_s", ",.0f"), ("pad_fraction", ".3f")):
        lines.append(f"| {key} | {cell(ours[key], fmt)} | {cell(hf.get(key), fmt)} "
                     f"| {cell(ratio.get(key), '.3f')} |")
    hf_mem = hf.get("peak_memory", {}).get("peak_mb")
    lines.append(f"| peak memory MB | {ours['peak_memory']['peak_mb']:,.0f} | {cell(hf_mem, ',.0f')} | |")
    peak = f["peak_flop_s"][f["peak_dtype"]]
    plain = p["plain_forward"]
    lines += ["", f"Predict ({p['split']}, {p['groups']} groups, batch {p['batch_size']}, no loss): "
              f"{p['groups_per_s']:,.1f} groups/s, {p['tokens_per_s']:,.0f} tokens/s; the encoder alone over the "
              f"same batches {plain['tokens_per_s']:,.0f} tokens/s (ours / plain {p['ratio_tokens_per_s']:.3f}).",
              f"FLOPs: {f['flops_per_token']:,.0f} per token, {f['achieved_flop_s'] / 1e9:,.2f} GFLOP/s achieved, "
              f"{f['peak_dtype']} matmul peak {peak / 1e9:,.1f} GFLOP/s"
              + "".join(f" ({k} {v / 1e9:,.1f})" for k, v in f["peak_flop_s"].items() if k != f["peak_dtype"])
              + f", MFU {f['mfu']:.4f}."]
    if "error" in hf:
        lines.append(f"Trainer not run: {hf['error']}")
    if "levers" in r:
        lines += ["", "| lever | samples/s | speedup | val score delta |", "| --- | --- | --- | --- |"]
        for lever, e in r["levers"].items():
            if "samples_per_s" not in e:
                lines.append(f"| {lever} | {e.get('error') or 'skipped: ' + e['skipped']} | | |")
            else:
                lines.append(f"| {lever} | {e['samples_per_s']:,.1f} | {cell(e.get('speedup'), '.3f')} "
                             f"| {cell(e.get('val_score_delta'), '+.4f')} |")
    return lines + [""]


# Under load: how the same short tiny benchmark fares while another job keeps every core busy. Each variant is a
# fresh process, since OpenMP reads its settings when torch starts.
LOAD_VARIANTS: dict[str, dict] = {
    "alone": {"load": False, "env": {}, "sets": []},
    "alone, OMP_WAIT_POLICY=PASSIVE": {"load": False, "env": {"OMP_WAIT_POLICY": "PASSIVE"}, "sets": []},
    "loaded": {"load": True, "env": {}, "sets": []},
    "loaded, OMP_WAIT_POLICY=PASSIVE": {"load": True, "env": {"OMP_WAIT_POLICY": "PASSIVE"}, "sets": []},
    "loaded, threads=1": {"load": True, "env": {}, "sets": ["train.threads=1"]},
}
BURNER = ("import torch\ntorch.set_num_threads({threads})\na = torch.randn(768, 768)\n"
          "while True:\n    a = torch.tanh(a @ a)\n")


def run_under_load(params_file: Path, sets: list[str], out_dir: Path, *, max_posts: int = 64,
                   variants: dict[str, dict] | None = None) -> dict:
    """Our loop on `tiny` (one epoch) per variant, each in its own process, beside a matmul job on every core."""
    import subprocess
    import sys

    variants = LOAD_VARIANTS if variants is None else variants
    cores = os.cpu_count() or 1
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="dsm5lab-load-") as tmp:
        for name, v in variants.items():
            burner = None
            if v["load"]:
                burner = subprocess.Popen([sys.executable, "-c", BURNER.format(threads=cores)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(2)  # let it reach full speed
            try:
                out = Path(tmp) / f"v{len(results)}"
                cmd = [sys.executable, "-m", "dsm5lab", "bench", "--params", str(params_file), "--shapes", "tiny",
                       "--epochs", "1", "--max-posts", str(max_posts), "--out", str(out),
                       *[a for s in [*sets, *v["sets"]] for a in ("--set", s)]]
                env = {**os.environ, "CI": "true", **v["env"]}
                load_before = os.getloadavg()[0]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            finally:
                if burner is not None:
                    burner.kill()
                    burner.wait()
            if proc.returncode != 0:
                raise UserError(f"bench --under-load: variant {name!r} failed: "
                                f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
            tiny = json.loads((out / "bench.json").read_text())["shapes"]["tiny"]
            results[name] = {"samples_per_s": tiny["train"]["ours"]["samples_per_s"],
                             "predict_groups_per_s": tiny["predict"]["groups_per_s"],
                             "load_avg_1m": round(load_before, 2), "env": v["env"], "sets": v["sets"],
                             "other_job": v["load"]}
    base = results.get("alone", {}).get("samples_per_s")
    for entry in results.values():
        entry["vs_alone"] = entry["samples_per_s"] / base if base else None
    report = {"cores": cores, "other_job": f"a torch matmul loop on {cores} threads", "max_posts": max_posts,
              "variants": results}
    atomic.write_json(out_dir / "under_load.json", report)
    lines = [f"# Under load: tiny, one epoch on {max_posts} posts, {cores} cores; the other job is "
             f"{report['other_job']}", "", "| variant | samples/s | vs alone | load average at start |",
             "| --- | --- | --- | --- |"]
    for name, e in results.items():
        vs = "n/a" if e["vs_alone"] is None else f"{e['vs_alone']:.3f}"
        lines.append(f"| {name} | {e['samples_per_s']:,.1f} | {vs} | {e['load_avg_1m']} |")
    atomic.write_text(out_dir / "under_load.md", "\n".join(lines) + "\n")
    return report


def run_stage_timing(root: Path, out_dir: Path, sets: list[str] = (), params_file: Path | None = None) -> dict:
    """`dvc repro -f -s STAGE` for each stage of dvc.yaml in order, in a scratch clone of the working tree.

    The clone holds the files git would commit (tracked and untracked-but-not-ignored); its params.yaml is
    `params_file` (default: the project's) with `sets` applied, so the project's own outputs, caches and
    study storage are never touched.
    """
    import shutil
    import subprocess
    import sys

    import yaml

    root, out_dir = Path(root).resolve(), Path(out_dir)
    # the stages call `dsm5lab`: this environment's scripts go first on PATH (as the Makefile does)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    dvc = shutil.which("dvc", path=path)
    if dvc is None or shutil.which("git", path=path) is None:
        raise UserError("bench --stages: needs `dvc` and `git` (make install puts dvc in .venv/bin)")
    if not (root / "dvc.yaml").is_file():
        raise UserError(f"bench --stages: no dvc.yaml in {root}")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                            capture_output=True)
    if listed.returncode != 0:
        raise UserError(f"bench --stages: {root} is not a git working tree")
    stages = list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
    env = {**os.environ, "PATH": path, "CI": "true", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "bench",
           "GIT_AUTHOR_EMAIL": "bench@example.invalid", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "bench@example.invalid"}
    times: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dsm5lab-stages-") as tmp:
        clone = Path(tmp) / "repo"
        for rel in filter(None, listed.stdout.decode().split("\0")):
            if (root / rel).is_file():
                (clone / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / rel, clone / rel)
        if params_file is not None:
            shutil.copy2(params_file, clone / "params.yaml")  # the stages read params.yaml
        if sets:
            raw = apply_overrides(yaml.safe_load((clone / "params.yaml").read_text()), list(sets))
            validate(raw, source="bench --stages")
            (clone / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "bench"]):
            subprocess.run(cmd, cwd=clone, env=env, check=True, capture_output=True)
        for stage in stages:
            tick = time.perf_counter()
            proc = subprocess.run([dvc, "repro", "-f", "-s", stage], cwd=clone, env=env, capture_output=True,
                                  text=True)
            times[stage] = time.perf_counter() - tick
            if proc.returncode != 0:
                said = (proc.stderr + proc.stdout).strip().splitlines() or ["no output"]
                ours = [line for line in said if line.startswith("error: ")]  # the stage's own one line
                raise UserError(f"bench --stages: stage {stage!r} failed: {(ours or said)[-1]}")
    total = sum(times.values())
    report = {"stages": times, "total_seconds": total, "sets": list(sets), "cores": os.cpu_count(),
              "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "command": "dvc repro -f -s STAGE per stage, in dvc.yaml order, in a scratch clone"}
    atomic.write_json(out_dir / "stages.json", report)
    lines = [f"# `dvc repro -f` by stage: {total:,.1f} s on {report['cores']} cores, load average "
             f"{report['load_avg_1m'][0]} -> {report['load_avg_1m'][1]}", "", "| stage | seconds | share |",
             "| --- | --- | --- |"]
    lines += [f"| {k} | {v:,.1f} | {v / total:.1%} |" for k, v in times.items()]
    atomic.write_text(out_dir / "stages.md", "\n".join(lines) + "\n")
    return report
