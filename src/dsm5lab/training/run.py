"""Everything a training run needs before its first step, built one way for train, HPO trials and the bench.

`build_run(params, paths)` reads the splits, builds the tokenizer and windows, the model, the
optimizer, scheduler and grad scaler, the checkpoint manager and the training state (fresh, or
the last checkpoint's on resume). `loop.fit(run, ...)` then only runs the loop.
"""

from __future__ import annotations

import math
import os
import platform
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dsm5lab.concurrency import resolve_threads
from dsm5lab.config import Params
from dsm5lab.data.criteria import Criterion, load_criteria
from dsm5lab.data.labels import SYMPTOMS
from dsm5lab.data.schema import read_table
from dsm5lab.device import pick_device, to_device
from dsm5lab.errors import UserError
from dsm5lab.models.backbone import build_backbone
from dsm5lab.models.multitask import ModelSpec, MultiTaskModel
from dsm5lab.pool.policy import mode_for
from dsm5lab.training.augment import build_augmenter, is_on
from dsm5lab.training.checkpoint import (CheckpointManager, clear_run, estimate_checkpoint_bytes, load_checkpoint,
                                         peek_state)
from dsm5lab.training.encoding import Group, Windower, WindowSpec, bucket_batches, collate
from dsm5lab.training.inference import VAL_METRICS
from dsm5lab.training.multitask_loss import class_weights
from dsm5lab.training.optim import build_optimizer


@dataclass
class RunPaths:
    prepared: Path  # stages/prepare
    checkpoints: Path  # this run's checkpoint scratch folder (the tracker's run_dir too)


@dataclass(kw_only=True)
class TrainState:
    """Where a run is; saved in every checkpoint (as a plain dict) and restored on resume."""

    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained (== batches per epoch: the epoch is done)
    step: int = 0  # optimizer steps
    best_score: float | None = None  # best early-stopping score beyond min_delta
    bad_evals: int = 0  # validations since it last improved
    history: list[dict] = field(default_factory=list)  # every validation: step, epoch and metrics
    train_seconds: float = 0.0
    train_groups: int = 0
    train_tokens: int = 0
    micro_batch: int  # the batch layout, kept on resume whatever the GPU has free then
    accumulation: int
    micro_splits: int = 1  # each micro-batch runs as this many forward passes; doubled by an out-of-memory

    @property
    def forward_batch(self) -> int:
        """Groups per forward pass: the micro-batch, halved by each out-of-memory."""
        return math.ceil(self.micro_batch / self.micro_splits)

    @property
    def forward_passes(self) -> int:
        """Forward passes per optimizer step: the accumulation, doubled by each out-of-memory."""
        return self.accumulation * min(self.micro_splits, self.micro_batch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainState:
        """The state of a checkpoint (which also holds the manager's run/score/metric keys)."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


@dataclass
class Run:
    """A training run ready to go: data, model, optimisation and where it stands."""

    params: Params
    paths: RunPaths
    device: torch.device
    train_posts: pd.DataFrame
    val_posts: pd.DataFrame
    criteria: list[Criterion]
    tokenizer: Any
    windower: Windower
    train_groups: list[Group]
    val_groups: list[Group]
    model: MultiTaskModel
    weights: dict  # class weights of the training split (weighted_bce)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    manager: CheckpointManager
    state: TrainState
    resumed_from: Path | None
    threads_rule: str = "pinned by train.threads"  # why torch runs `threads` threads (resolve_threads)
    augmenter: Any = None  # train.augment (training.augment.Augmenter), None when off
    train_sentences: pd.DataFrame | None = None  # the training posts' sentences, what the augmenter rewrites

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def evidence_kind(self) -> str | None:
        return self.model.spec.evidence_head if self.model.spec.has_evidence else None

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_groups) / self.state.micro_batch)

    def epoch_order(self, epoch: int) -> list[list[int]]:
        """The epoch's micro-batches (group indices), length-bucketed and shuffled by (seed, epoch)."""
        return epoch_order(self.train_groups, self.state.micro_batch, self.params.seed, epoch)

    def prepare_epoch(self, epoch: int) -> None:
        """Re-augment the training posts for `epoch` (seeded by seed and epoch) and re-encode them; nothing when
        train.augment is off. Only the training posts: validation groups are encoded once, from the prepared text."""
        if self.augmenter is None:
            return
        posts, sentences = self.augmenter(self.train_posts, self.train_sentences, self.params.seed, epoch)
        self.train_groups = self.windower.encode(posts, sentences)

    def batches(self, order: list[list[int]], epoch: int):
        """Collated batches in `order` on the run's device, built by train.num_workers workers."""
        loader = batch_loader(self.train_groups, order, self.pad_id, self.evidence_kind,
                              self.model.spec.max_span_tokens, self.params.train.num_workers,
                              self.params.seed + epoch)
        return (to_device(b, self.device) for b in loader)


def epoch_order(groups: list[Group], micro: int, seed: int, epoch: int) -> list[list[int]]:
    """An epoch's micro-batches (group indices), length-bucketed and shuffled by (seed, epoch)."""
    return bucket_batches([g.n_tokens for g in groups], micro, np.random.default_rng([seed, epoch]))


def steps_per_epoch(n_groups: int, state: TrainState) -> int:
    """Optimizer steps in an epoch: micro-batches, grouped into accumulation windows (the last may be short)."""
    return math.ceil(math.ceil(n_groups / state.micro_batch) / state.accumulation)


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


def system_info(device: torch.device, cpu_isa: str) -> dict:
    """What the run ran on, logged once; `numerics` is the CPU kernel dispatch it really used."""
    import transformers

    from dsm5lab.numerics import effective

    info = {
        "device": str(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_bf16": True,
        "numerics": effective(cpu_isa),
    }
    return info | gpu_info(device)


def gpu_info(device: torch.device) -> dict:
    """The GPU a CUDA run used (name, memory, compute capability, CUDA and cuDNN versions); nulls elsewhere."""
    if device.type != "cuda":
        return dict.fromkeys(("gpu", "gpu_memory_gb", "compute_capability", "cuda", "cudnn", "cuda_bf16"))
    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 2),
            "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "cuda_bf16": torch.cuda.is_bf16_supported()}


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


def window_spec(params: Params, encoder_config) -> WindowSpec:
    m, t = params.model, params.train
    return WindowSpec(
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


def build_run(params: Params, paths: RunPaths, *, resume: bool = False, train_ids: list[str] | None = None,
              val_ids: list[str] | None = None, adamw: dict | None = None) -> Run:
    """Data, model and optimisation for a run, seeded; on resume, the state of its latest checkpoint.
    `adamw`: extra AdamW keyword arguments (see build_optimizer)."""
    from dsm5lab.models.saved import write_run_assets

    t, m = params.train, params.model
    threads, threads_rule = resolve_threads(t.threads)
    if threads:
        torch.set_num_threads(threads)
    seed_everything(params.seed, t.deterministic)
    device = pick_device()
    metric = t.early_stopping.metric
    if metric not in VAL_METRICS[t.task]:
        raise UserError(f"train.early_stopping.metric: {metric!r} is not computed for task {t.task!r} "
                        f"(allowed: {', '.join(VAL_METRICS[t.task])})")
    # before the long steps: a missing thesaurus or MLM fails now; the annotations name the posts left unaugmented
    annotations = read_table(paths.prepared, "annotations") if is_on(t.augment) else None
    augmenter = build_augmenter(params, device, annotations)
    train_posts, val_posts, sentences = load_splits(paths.prepared, train_ids, val_ids)
    criteria = load_criteria(paths.prepared / "criteria.json")
    descriptions = [c.description for c in criteria]
    # the built-in tokenizer learns its vocabulary from the training posts and the criterion descriptions
    backbone = build_backbone(m, train_posts["text"].tolist(), descriptions)
    windower = Windower(backbone.tokenizer, window_spec(params, backbone.encoder.config), descriptions)
    train_groups, val_groups = windower.encode(train_posts, sentences), windower.encode(val_posts, sentences)
    model = MultiTaskModel(backbone.encoder, backbone.hidden_size, model_spec(params)).to(device)
    write_run_assets(paths.checkpoints, model, backbone.tokenizer, windower.spec, criteria, m.backbone)
    weights = class_weights(train_groups, t.loss, device)
    if not resume:
        clear_run(paths.checkpoints)
    manager = CheckpointManager(paths.checkpoints, keep_last_n=t.checkpoint.keep_last_n,
                                keep_best_k=t.checkpoint.keep_best_k, mode=mode_for(metric),
                                min_free_gb=t.checkpoint.min_free_gb, run=paths.checkpoints.name)
    resumed_from = manager.latest if resume else None
    if resumed_from is not None:  # the batch layout of the interrupted run, whatever the GPU has free now
        saved = peek_state(resumed_from)
        micro, accum = saved.get("micro_batch", t.batch_size), saved.get("accumulation", t.grad_accum_steps)
    elif device.type == "cuda" and t.batch_probe.enabled:
        from dsm5lab.training.batch_probe import cuda_memory, probe_micro_batch

        micro, accum = probe_micro_batch(model, train_groups, params, backbone.tokenizer.pad_token_id, weights,
                                         device, memory=cuda_memory)
    else:
        micro, accum = t.batch_size, t.grad_accum_steps
    state = TrainState(micro_batch=micro, accumulation=accum)
    optimizer, scheduler = build_optimizer(model, t, steps_per_epoch(len(train_groups), state) * t.epochs, adamw)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and t.precision == "fp16")
    manager.check_room(estimate_checkpoint_bytes(model))  # before the first epoch, not at its end
    if resumed_from is not None:
        saved = load_checkpoint(resumed_from, model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        state = TrainState.from_dict({"micro_batch": micro, "accumulation": accum, **saved})
    train_sentences = None if augmenter is None else sentences[sentences["post_id"].isin(set(train_posts["post_id"]))]
    return Run(params, paths, device, train_posts, val_posts, criteria, backbone.tokenizer, windower, train_groups,
               val_groups, model, weights, optimizer, scheduler, scaler, manager, state, resumed_from, threads_rule,
               augmenter, train_sentences)
