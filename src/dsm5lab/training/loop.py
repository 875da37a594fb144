"""The training loop: one function for the `train` stage, HPO trials and tests.

forward -> loss -> backward -> clip -> step -> scheduler -> zero_grad -> log, with
validation, checkpoints and early stopping at fixed points. Options change values
in the loop, not its shape.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dsm5lab.config import Params
from dsm5lab.data.criteria import load_criteria
from dsm5lab.data.labels import SYMPTOMS
from dsm5lab.data.schema import read_table
from dsm5lab.errors import UserError
from dsm5lab.evaluation.metrics import chance_macro_f1
from dsm5lab.models.backbone import build_backbone
from dsm5lab.models.multitask import ModelSpec, MultiTaskModel
from dsm5lab.progress import progress
from dsm5lab.tracking import flatten
from dsm5lab.training.checkpoint import CheckpointManager, clear_run, load_checkpoint, mode_for, peek_state
from dsm5lab.training.encoding import Encoder, EncodeSpec, Group, bucket_batches, collate
from dsm5lab.training.inference import autocast_for, predict, to_device, validation_metrics
from dsm5lab.training.objective import class_weights, objective
from dsm5lab.training.optim import build_optimizer

log = logging.getLogger("dsm5lab.train")

# Validation metrics a run computes; train.early_stopping.metric must be one of those its task has.
VAL_METRICS = {
    "criteria": ("val/loss", "val/macro_f1", "val/micro_f1", "val/score"),
    "evidence": ("val/loss", "val/sentence_macro_f1", "val/sentence_micro_f1", "val/score"),
    "joint": ("val/loss", "val/macro_f1", "val/micro_f1", "val/sentence_macro_f1", "val/sentence_micro_f1", "val/score"),
}


class DivergedError(UserError):
    """The loss became NaN or infinite; nothing from the diverged steps is saved."""

    exit_code = 3


@dataclass
class RunPaths:
    prepared: Path  # stages/prepare
    model_out: Path | None  # where the final model is exported (None: keep only checkpoints)
    checkpoints: Path  # this run's checkpoint scratch folder
    live_dir: Path | None  # dvclive folder (None disables dvclive)


@dataclass
class TrainResult:
    best: dict  # validation metrics at the best checkpoint, plus step and epoch
    history: list[dict]  # every validation: step, epoch and metrics
    steps: int
    epochs_run: int
    stopped_early: bool
    throughput: dict
    chance_macro_f1: float | None
    best_checkpoint: Path | None
    n_parameters: int
    system: dict = field(default_factory=dict)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; in deterministic mode ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def system_info(device: torch.device) -> dict:
    """What the run ran on, logged once."""
    import transformers

    info = {
        "device": str(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_bf16": True,
    }
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda_bf16=torch.cuda.is_bf16_supported())
    return info


def load_splits(prepared: Path, train_ids: list[str] | None, val_ids: list[str] | None):
    """Posts and sentences of the train and validation parts (the prepare split unless ids are given)."""
    posts = read_table(prepared, "posts")
    sentences = read_table(prepared, "sentences")
    train = posts[posts["post_id"].isin(train_ids)] if train_ids is not None else posts[posts["split"] == "train"]
    val = posts[posts["post_id"].isin(val_ids)] if val_ids is not None else posts[posts["split"] == "val"]
    if train.empty or val.empty:
        raise UserError(f"{prepared}: the train or validation part is empty; rerun prepare")
    return train.reset_index(drop=True), val.reset_index(drop=True), sentences


def model_spec(params: Params) -> ModelSpec:
    m, t = params.model, params.train
    return ModelSpec(
        task=t.task,
        channels=len(SYMPTOMS) if t.input_format == "multi_label" else 1,
        pooling=m.pooling,
        criteria_head=m.criteria_head,
        evidence_head=m.evidence_head,
        hidden_dim=m.hidden_dim,
        dropout=m.classifier_dropout,
        coupling=t.task_coupling,
        max_span_tokens=m.max_span_tokens,
    )


def encode_spec(params: Params, encoder_config) -> EncodeSpec:
    m, t = params.model, params.train
    return EncodeSpec(
        input_format=t.input_format,
        level=t.level,
        max_length=m.max_length,
        stride=m.stride,
        max_chunks=m.max_chunks,
        with_evidence=t.task in ("evidence", "joint"),
        use_token_types=int(getattr(encoder_config, "type_vocab_size", 1)) > 1,
    )


class _Batches(torch.utils.data.Dataset):
    """Collated batches in a fixed order, so DataLoader workers can build them ahead of the loop."""

    def __init__(self, groups: list[Group], order: list[list[int]], pad_id: int, kind, max_span: int):
        self.groups, self.order, self.args = groups, order, (pad_id, kind, max_span)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        return collate([self.groups[j] for j in self.order[i]], *self.args)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def batch_loader(groups, order, pad_id, kind, max_span, num_workers: int, seed: int):
    """Batches in `order`; built in `num_workers` seeded worker processes, or inline when 0."""
    dataset = _Batches(groups, order, pad_id, kind, max_span)
    if num_workers == 0:
        return (dataset[i] for i in range(len(dataset)))
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=num_workers, worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available(),
    )


def fit(
    params: Params,
    paths: RunPaths,
    tracker,
    *,
    resume: bool = False,
    train_ids: list[str] | None = None,
    val_ids: list[str] | None = None,
    on_validation: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train the model that params describe; validate, checkpoint and stop early; export the best."""
    t, m = params.train, params.model
    if t.threads:
        torch.set_num_threads(t.threads)
    seed_everything(params.seed, t.deterministic)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    metric = t.early_stopping.metric
    if metric not in VAL_METRICS[t.task]:
        raise UserError(f"train.early_stopping.metric: {metric!r} is not computed for task {t.task!r} "
                        f"(allowed: {', '.join(VAL_METRICS[t.task])})")
    train_posts, val_posts, sentences = load_splits(paths.prepared, train_ids, val_ids)
    criteria = load_criteria(paths.prepared / "criteria.json")
    # the built-in tokenizer learns its vocabulary from the training posts and the criterion descriptions
    backbone = build_backbone(m, train_posts["text"].tolist(), [c.description for c in criteria])
    spec = model_spec(params)
    enc = Encoder(backbone.tokenizer, encode_spec(params, backbone.encoder.config), [c.description for c in criteria])
    train_groups = enc.encode(train_posts, sentences)
    val_groups = enc.encode(val_posts, sentences)
    model = MultiTaskModel(backbone.encoder, backbone.hidden_size, spec).to(device)
    from dsm5lab.models.saved import write_run_assets

    write_run_assets(paths.checkpoints, model, backbone.tokenizer, enc.spec, criteria, m.backbone)
    pad_id = backbone.tokenizer.pad_token_id
    kind = spec.evidence_head if spec.has_evidence else None
    weights = class_weights(train_groups, t.loss, device)

    if not resume:
        clear_run(paths.checkpoints)
    manager = CheckpointManager(paths.checkpoints, keep_last_n=t.checkpoint.keep_last_n,
                                keep_best_k=t.checkpoint.keep_best_k, mode=mode_for(metric),
                                min_free_gb=t.checkpoint.min_free_gb, run=paths.checkpoints.name)
    resumed = peek_state(manager.latest) if resume and manager.latest is not None else None
    micro, accum = t.batch_size, t.grad_accum_steps
    if resumed is not None:  # the batch layout of the interrupted run, whatever the GPU has free now
        micro, accum = resumed.get("micro_batch", micro), resumed.get("accumulation", accum)
    elif device.type == "cuda" and t.batch_probe.enabled:
        micro, accum = _probe(model, train_groups, t, pad_id, kind, spec, device, params, weights)
    batches_per_epoch = math.ceil(len(train_groups) / micro)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    optimizer, scheduler = build_optimizer(model, t, steps_per_epoch * t.epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and t.precision == "fp16")
    state = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best_score": None, "bad_evals": 0,
             "history": [], "train_seconds": 0.0, "train_groups": 0, "train_tokens": 0,
             "micro_batch": micro, "accumulation": accum}
    if resumed is not None:
        state = load_checkpoint(manager.latest, model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        tracker.event("resume", checkpoint=str(manager.latest), step=state["step"], epoch=state["epoch"])
    info = system_info(device)
    tracker.event("system", **info)
    tracker.log_params({**flatten(params.model_dump(include={"seed", "model", "train"})), "data.source": params.data.source,
                        "train.micro_batch": micro, "train.accumulation": accum})
    model_config = {"spec": spec.to_dict(), "backbone": m.backbone}
    n_params = sum(p.numel() for p in model.parameters())
    higher = mode_for(metric) == "max"

    def improved(score: float) -> bool:
        best = state["best_score"]
        if best is None:
            return True
        return score > best + t.early_stopping.min_delta if higher else score < best - t.early_stopping.min_delta

    def validate_and_checkpoint(epoch: int, batch_in_epoch: int) -> bool:
        """Validate, log, checkpoint; return True when early stopping says stop."""
        pred = predict(model, val_groups, t.eval_batch_size, pad_id, device, t.precision, params, weights)
        metrics = validation_metrics(val_groups, pred, val_posts, t.task)
        progress_epochs = epoch + batch_in_epoch / batches_per_epoch
        tracker.log_metrics({**metrics, "train/epoch": progress_epochs}, step=state["step"])
        state["history"].append({"step": state["step"], "epoch": epoch, **metrics})
        score = metrics[metric]
        if math.isfinite(score) and improved(score):  # min_delta decides patience; the manager decides "best"
            state.update(best_score=score, bad_evals=0)
        else:
            state["bad_evals"] += 1
        state.update(epoch=epoch, batch_in_epoch=batch_in_epoch)
        manager.save(model, step=state["step"], epoch=epoch, score=score, metric=metric, optimizer=optimizer,
                     scheduler=scheduler, scaler=scaler, state=state, config=model_config)
        if on_validation is not None:  # e.g. an HPO trial reporting and pruning (it may raise to stop the run)
            on_validation(state["step"], {**metrics, "train/epoch": progress_epochs})
        return state["bad_evals"] >= t.early_stopping.patience

    model.train()
    stopped = False
    start_epoch, skip = state["epoch"], state["batch_in_epoch"]
    if skip >= batches_per_epoch:  # the checkpoint closed its epoch
        start_epoch, skip = start_epoch + 1, 0
    for epoch in range(start_epoch, t.epochs):
        order = bucket_batches([g.n_tokens for g in train_groups], micro, np.random.default_rng([params.seed, epoch]))
        tick = time.perf_counter()
        loader = batch_loader(train_groups, order[skip:], pad_id, kind, spec.max_span_tokens, t.num_workers,
                              params.seed + epoch)
        for bi, (idx, batch) in enumerate(progress(zip(order[skip:], loader), f"epoch {epoch + 1}/{t.epochs}",
                                                   total=len(order) - skip), start=skip):
            batch = to_device(batch, device)
            with autocast_for(device, t.precision):
                out = model(batch)
                loss, parts = objective(out, batch, model, params, weights)
            if not torch.isfinite(loss):
                raise DivergedError(
                    f"train: loss is {loss.item()} at step {state['step']} (epoch {epoch + 1}); stopped without "
                    "saving it. Lower train.learning_rate, keep train.max_grad_norm > 0, or use precision fp32"
                )
            # the epoch's last accumulation window may hold fewer micro-batches: average over those it has
            window = min(accum, len(order) - (bi // accum) * accum)
            scaler.scale(loss / window).backward()
            state["train_groups"] += len(idx)
            state["train_tokens"] += int(batch["attention_mask"].sum())
            last_in_epoch = bi + 1 == len(order)
            if (bi + 1) % accum and not last_in_epoch:
                continue
            scaler.unscale_(optimizer)
            if t.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            if state["step"] % t.log_every_steps == 0:
                tracker.log_metrics({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0],
                                     **{f"train/loss_{k}": v.item() for k, v in parts.items()}}, step=state["step"])
            if t.eval_every_steps and state["step"] % t.eval_every_steps == 0 and not last_in_epoch:
                state["train_seconds"] += time.perf_counter() - tick
                stopped = validate_and_checkpoint(epoch, bi + 1)
                tick = time.perf_counter()
                if stopped:
                    break
        skip = 0
        if stopped:
            break
        state["train_seconds"] += time.perf_counter() - tick
        if validate_and_checkpoint(epoch, len(order)):
            stopped = True
            break

    secs = max(state["train_seconds"], 1e-9)
    throughput = {"samples_per_s": state["train_groups"] / secs, "tokens_per_s": state["train_tokens"] / secs,
                  "train_seconds": state["train_seconds"], "micro_batch": micro, "accumulation": accum}
    chance = chance_macro_f1(val_posts[list(SYMPTOMS)].to_numpy()) if spec.has_criteria else None
    best_step = next((r["step"] for r in manager.records if manager.best and r["path"] == manager.best.name), None)
    result = TrainResult(
        best=next(({"step": h["step"], "epoch": h["epoch"], **{k: v for k, v in h.items() if k.startswith("val/")}}
                   for h in state["history"] if h["step"] == best_step), {}), history=state["history"], steps=state["step"], stopped_early=stopped,
        epochs_run=(state["history"][-1]["epoch"] + 1) if state["history"] else 0, throughput=throughput,
        chance_macro_f1=chance, best_checkpoint=manager.best, n_parameters=n_params, system=info,
    )
    if paths.model_out is not None and manager.best is not None:
        from dsm5lab.models.saved import export_model

        load_checkpoint(manager.best, model, restore_rng=False)
        export_model(paths.model_out, model, backbone.tokenizer, enc.spec, criteria, result, m.backbone)
    return result


def _probe(model, groups, t, pad_id, kind, spec, device, params, weights) -> tuple[int, int]:
    """On CUDA: the largest micro-batch of the longest groups that fits, and the accumulation for the rest."""
    from dsm5lab.training.batch_probe import cuda_memory, probe_batch_size

    longest = sorted(range(len(groups)), key=lambda i: -groups[i].n_tokens)

    def try_step(n: int) -> None:
        torch.cuda.reset_peak_memory_stats(device)
        batch = to_device(collate([groups[i] for i in longest[:n]], pad_id, kind, spec.max_span_tokens), device)
        with autocast_for(device, t.precision):
            loss, _ = objective(model(batch), batch, model, params, weights)
        loss.backward()
        model.zero_grad(set_to_none=True)

    micro = probe_batch_size(try_step, t.batch_size, headroom=t.batch_probe.headroom, memory=cuda_memory)
    steps = t.grad_accum_steps * math.ceil(t.batch_size / micro)
    log.info("batch probe: micro-batch %d x %d accumulation steps", micro, steps)
    return micro, steps
