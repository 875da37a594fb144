"""GPU check: AMP training, the batch probe, out-of-memory recovery and MiniLM throughput on one CUDA device.

    python scripts/gpu_check.py --out DIR                       # one CUDA GPU, a few minutes
    python scripts/gpu_check.py --out DIR --device cpu --smoke  # the same code paths, tiny and on the CPU

Writes DIR/gpu_check.json with the numbers, and exits 1 when a check fails (the JSON says which).
Every run is a real `build_run` + `fit` on synthetic posts, as `dsm5lab train` does; nothing is
tracked to MLflow. In smoke mode the out-of-memory is injected (a CPU cannot be made to run out
cleanly) and the probe measures nothing but injected OOMs; on CUDA both are real.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OOM_CAP_GB = 4.0  # memory the out-of-memory check allows the process: MiniLM at micro-batch 256 does not fit
SMOKE = ["data.synthetic.n_posts=40", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
         "model.tiny.intermediate_size=64", "model.max_length=64", "model.stride=16", "model.max_chunks=2",
         "model.hidden_dim=16", "train.eval_batch_size=32"]
MINILM = ["model.backbone=minilm", "model.max_length=256", "train.learning_rate=5e-5"]


class Recorder:
    """A tracker for fit() that keeps the events and the last train loss."""

    def __init__(self):
        self.events, self.last_loss = [], None

    def event(self, kind, **fields):
        self.events.append({"kind": kind, **fields})

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step):
        self.last_loss = metrics.get("train/loss", self.last_loss)

    def set_tags(self, tags):
        pass

    def of(self, kind):
        return [e for e in self.events if e["kind"] == kind]


class Check:
    """Paths and settings shared by the checks; `train` builds and fits one run."""

    def __init__(self, work: Path, smoke: bool):
        from dsm5lab.config import load_params
        from dsm5lab.data import prepare

        self.work, self.smoke = work, smoke
        self.base = (SMOKE if smoke else ["data.synthetic.n_posts=1484"]) + ["train.num_workers=0",
                                                                              "train.eval_every_steps=0"]
        prepare.run(load_params(ROOT / "params.yaml", self.base), work)
        self.runs = 0

    def train(self, overrides: list[str], *, max_posts: int | None = None, before_fit=None):
        """(run, result, tracker) of a fresh run; `max_posts` trains on the first posts of the split only."""
        from dsm5lab.config import load_params
        from dsm5lab.training.loop import fit
        from dsm5lab.training.run import RunPaths, build_run, load_splits

        params = load_params(ROOT / "params.yaml", self.base + overrides)
        prepared = self.work / "stages/prepare"
        ids = (None, None)
        if max_posts is not None:
            train, val, _ = load_splits(prepared, None, None)
            ids = (train["post_id"].tolist()[:max_posts], val["post_id"].tolist()[: max(8, max_posts // 4)])
        self.runs += 1
        run = build_run(params, RunPaths(prepared, self.work / f"ckpt-{self.runs}"), train_ids=ids[0],
                        val_ids=ids[1])
        if before_fit is not None:
            before_fit(run)
        tracker = Recorder()
        result = fit(run, tracker)
        return run, result, tracker


def amp(check: Check, device) -> list[dict]:
    """One epoch per (backbone, precision): finite losses, the optimizer stepped, GradScaler alive for fp16."""
    models = {"tiny": []} if check.smoke else {"tiny": [], "minilm": MINILM}
    precisions = ["bf16"] if device.type == "cpu" else ["bf16", "fp16"]  # fp16 needs CUDA
    out = []
    for name, overrides in models.items():
        for precision in precisions:
            tick = time.perf_counter()
            run, result, tracker = check.train(overrides + [f"train.precision={precision}", "train.epochs=1",
                                                            "train.batch_probe.enabled=false"], max_posts=96)
            val_loss = result.history[-1]["val/loss"]
            out.append({"backbone": name, "precision": precision, "steps": result.steps,
                        "train_loss": tracker.last_loss, "val_loss": val_loss,
                        "scaler_scale": run.scaler.get_scale() if run.scaler.is_enabled() else None,
                        "seconds": time.perf_counter() - tick,
                        "ok": result.steps > 0 and math.isfinite(val_loss)
                        and (tracker.last_loss is None or math.isfinite(tracker.last_loss))})
    return out


def probe(check: Check, device) -> dict:
    """The batch probe at 64 x 16 groups per step (8 x 4 in smoke mode), then one epoch at its layout."""
    import torch

    from dsm5lab.training.batch_probe import probe_micro_batch

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger, level = logging.getLogger("dsm5lab.train"), logging.getLogger("dsm5lab.train").level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    batch_size, accum = (8, 4) if check.smoke else (64, 16)
    overrides = ([] if check.smoke else MINILM) + ["train.precision=bf16", f"train.batch_size={batch_size}",
                                                   f"train.grad_accum_steps={accum}", "train.epochs=1"]
    per_step, layout = batch_size * accum, {}

    def before_fit(run):
        if device.type == "cuda":  # build_run has probed: measure the epoch at the layout it chose
            torch.cuda.reset_peak_memory_stats(device)
            return
        real = run.model.forward  # on the CPU build_run does not probe: probe here, against an injected OOM

        def forward(batch):
            if batch["n_groups"] > 13:
                raise torch.OutOfMemoryError("CUDA out of memory (injected by gpu_check --smoke)")
            return real(batch)

        run.model.forward = forward
        layout["micro"], layout["accumulation"] = probe_micro_batch(
            run.model, run.train_groups, run.params, run.pad_id, run.weights, run.device)
        del run.model.forward

    tick = time.perf_counter()
    try:
        run, result, tracker = check.train(overrides, before_fit=before_fit)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    micro = layout.get("micro", run.state.micro_batch)
    accumulation = layout.get("accumulation", run.state.accumulation)
    said = [line for line in lines if line.startswith("batch probe:")]
    return {"groups_per_step": per_step, "micro_batch": micro, "accumulation": accumulation,
            "log": said, "seconds_with_one_epoch": time.perf_counter() - tick, "steps": result.steps,
            "out_of_memory_events": tracker.of("out_of_memory"),
            "epoch_peak_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "headroom": run.params.train.batch_probe.headroom,
            "ok": micro * accumulation >= per_step and bool(said) and not tracker.of("out_of_memory")}


def oom(check: Check, device) -> dict:
    """Micro-batch 256 under a memory cap: the real OOM halves it until a step fits, and the run completes."""
    import torch

    from dsm5lab.training.run import steps_per_epoch

    overrides = ([] if check.smoke else MINILM) + ["train.precision=bf16", "train.batch_size=256",
                                                   "train.batch_probe.enabled=false", "train.epochs=1"]

    def limit(run):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(
                OOM_CAP_GB * 2**30 / torch.cuda.get_device_properties(device).total_memory, device)
            return
        real = run.model.forward

        def forward(batch):  # smoke: anything above 8 groups "runs out"
            if batch["n_groups"] > 8:
                raise torch.OutOfMemoryError("CUDA out of memory (injected by gpu_check --smoke)")
            return real(batch)

        run.model.forward = forward

    tick = time.perf_counter()
    try:
        run, result, tracker = check.train(overrides, before_fit=limit)
    finally:
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            torch.cuda.empty_cache()
    events = tracker.of("out_of_memory")
    expected = steps_per_epoch(len(run.train_groups), run.state)
    return {"cap_gb": OOM_CAP_GB if device.type == "cuda" else None, "events": events,
            "final_micro_batch": result.throughput["micro_batch"],
            "final_accumulation": result.throughput["accumulation"], "steps": result.steps,
            "expected_steps": expected, "seconds": time.perf_counter() - tick,
            "ok": bool(events) and result.steps == expected and math.isfinite(result.history[-1]["val/loss"])}


def throughput(check: Check, device) -> dict:
    """MiniLM (tiny in smoke mode) at bf16, 32 groups per micro-batch: windows, groups and tokens per second."""
    overrides = ([] if check.smoke else MINILM) + ["train.precision=bf16", "train.batch_size=32",
                                                   "train.batch_probe.enabled=false",
                                                   f"train.epochs={1 if check.smoke else 3}"]
    run, result, _ = check.train(overrides)
    tp = result.throughput
    windows = sum(len(g.windows) for g in run.train_groups) * result.epochs_run
    return {"backbone": run.params.model.backbone, "precision": "bf16", "micro_batch": tp["micro_batch"],
            "max_length": run.params.model.max_length, "max_chunks": run.params.model.max_chunks,
            "deterministic": run.params.train.deterministic, "train_groups": len(run.train_groups),
            "epochs": result.epochs_run, "windows": windows,
            "train_seconds": tp["train_seconds"], "windows_per_s": windows / tp["train_seconds"],
            "groups_per_s": tp["samples_per_s"], "tokens_per_s": tp["tokens_per_s"],
            "note": "fit()'s own timing: every training step of every epoch, validation excluded; "
                    "CUDA was warmed up by the earlier checks", "ok": result.steps > 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny model and data: seconds, not minutes")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA: build_run then picks the CPU
    os.environ.setdefault("CI", "true")  # no progress bars
    import torch

    from dsm5lab.device import pick_device
    from dsm5lab.training.run import gpu_info

    device = pick_device()
    if device.type != args.device:
        print(f"gpu_check: asked for {args.device} but torch sees {device.type}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    report = {"device": str(device), "smoke": args.smoke, "torch": torch.__version__, **gpu_info(device)}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        check = Check(Path(tmp), args.smoke)
        for name, fn in (("amp", amp), ("probe", probe), ("oom_recovery", oom), ("throughput", throughput)):
            tick = time.perf_counter()
            try:
                report[name] = fn(check, device)
            except Exception as exc:  # noqa: BLE001 - one failed check must not hide the others' numbers
                report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(f"gpu_check: {name} done in {time.perf_counter() - tick:.1f} s", file=sys.stderr, flush=True)
    oks = {name: all(r["ok"] for r in report[name]) if isinstance(report[name], list) else report[name]["ok"]
           for name in ("amp", "probe", "oom_recovery", "throughput")}
    report |= {"ok": oks, "seconds": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(oks), flush=True)
    return 0 if all(oks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
