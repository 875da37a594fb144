"""The training loop: one function for the `train` stage, HPO trials and the bench.

forward -> loss -> backward -> clip -> step -> scheduler -> zero_grad -> log, with
validation, checkpoints and early stopping at fixed points. Options change values
in the loop, not its shape; everything the loop needs is built by `run.build_run`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dsm5lab import stopping
from dsm5lab.data.labels import SYMPTOMS
from dsm5lab.device import autocast_for
from dsm5lab.dotted import flatten
from dsm5lab.errors import UserError
from dsm5lab.metrics import chance_macro_f1
from dsm5lab.progress import progress, say
from dsm5lab.pool.policy import mode_for
from dsm5lab.training.batch_probe import is_oom, release_memory
from dsm5lab.training.inference import predict, validation_metrics
from dsm5lab.training.multitask_loss import multitask_loss
from dsm5lab.training.run import Run, system_info

# (step, validation metrics, final): final when the fit ends after this validation (its last epoch, or patience)
OnValidation = Callable[[int, dict, bool], None]
log = logging.getLogger("dsm5lab.train")


class DivergedError(UserError):
    """The loss became NaN or infinite; nothing from the diverged steps is saved."""

    exit_code = 3


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


def fit(run: Run, tracker, on_validation: OnValidation | None = None, label: str | None = None) -> TrainResult:
    """Train the run; validate, checkpoint and stop early. The best checkpoint is `result.best_checkpoint`.

    With a `label` (the train stage, an HPO trial), each validation also prints one line to stderr,
    terminal or not: where it is, the running mean of the training loss since the epoch began, the
    validation metrics and the seconds the epoch took so far (progress.say).

    An out-of-memory in a forward or backward pass halves the micro-batch and redoes its optimizer
    step from the step's first micro-batch (see `_halve_micro_batch`).
    """
    t, s, model, optimizer = run.params.train, run.state, run.model, run.optimizer
    system = _log_start(run, tracker)
    began = time.monotonic()
    model.train()
    stopped = False
    start_epoch, skip = s.epoch, s.batch_in_epoch
    if skip >= run.batches_per_epoch:  # the checkpoint closed its epoch
        start_epoch, skip = start_epoch + 1, 0
    losses = _LossMeans(run.device)
    for epoch in range(start_epoch, t.epochs):
        run.prepare_epoch(epoch)  # train.augment: this epoch's augmented training text (no-op when off)
        order = run.epoch_order(epoch)
        tick = epoch_start = time.perf_counter()
        losses.new_epoch()
        restart: int | None = skip
        while restart is not None:  # once per pass; an out-of-memory starts another at its step's first batch
            pieces = split_micro_batches(order, restart, s.micro_splits)
            step_start = _StepStart.now(run, restart)
            batches, restart = zip(pieces, run.batches([idx for _, idx, _, _ in pieces], epoch)), None
            for (bi, idx, first, last), batch in progress(batches, f"epoch {epoch + 1}/{t.epochs}",
                                                          total=len(pieces)):
                if first and bi % s.accumulation == 0:
                    if stopping.requested():  # a SIGTERM waited for this step boundary (stopping.deferred)
                        _resume_point(run, tracker, epoch, bi, time.monotonic() - began)
                        stopping.check()
                    step_start = _StepStart.now(run, bi)
                try:
                    with autocast_for(run.device, t.precision):
                        out = model(batch)
                        loss, parts = multitask_loss(out, batch, model, run.params, run.weights)
                    if not torch.isfinite(loss):
                        raise DivergedError(
                            f"train: loss is {loss.item()} at step {s.step} (epoch {epoch + 1}); stopped "
                            "without saving it. Lower train.learning_rate, keep train.max_grad_norm > 0, "
                            "or use precision fp32"
                        )
                    # the epoch's last accumulation window may hold fewer micro-batches: average over those
                    # it has; a micro-batch run in pieces weighs each piece by its share of the groups
                    window = min(s.accumulation, len(order) - (bi // s.accumulation) * s.accumulation)
                    run.scaler.scale(loss * (len(idx) / len(order[bi])) / window).backward()
                    losses.add(loss, len(idx))
                except Exception as exc:  # noqa: BLE001 - only an out-of-memory is handled here
                    if not is_oom(exc):
                        raise
                    _check_can_halve(run, epoch, len(idx), exc)
                    out = loss = parts = None  # a failed backward's graph pins its activations
                    restart, failed = step_start.batch, len(idx)
                    losses.drop_step()
                    break
                s.train_groups += len(idx)
                s.train_tokens += int(batch["attention_mask"].sum())
                last_in_epoch = bi + 1 == len(order)
                if not last or ((bi + 1) % s.accumulation and not last_in_epoch):
                    continue
                run.scaler.unscale_(optimizer)
                if t.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                run.scaler.step(optimizer)
                run.scaler.update()
                run.scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                s.step += 1
                losses.end_step()
                if s.step % t.log_every_steps == 0:
                    lr = run.scheduler.get_last_lr()[0]
                    # loss: the step's last micro-batch (spiky); loss_mean: every group since the last log
                    tracker.log_metrics({"train/loss": loss.item(), "train/loss_mean": losses.window_mean(),
                                         "train/lr": lr,
                                         **{f"train/loss_{k}": v.item() for k, v in parts.items()}}, step=s.step)
                if t.eval_every_steps and s.step % t.eval_every_steps == 0 and not last_in_epoch:
                    s.train_seconds += time.perf_counter() - tick
                    stopped = validate_and_checkpoint(run, tracker, epoch, bi + 1, on_validation)
                    _say_validation(label, run, epoch, bi + 1, losses, time.perf_counter() - epoch_start)
                    tick = time.perf_counter()
                    if stopped:
                        break
            if restart is not None:  # outside the except block: the error's traceback no longer pins memory
                _halve_micro_batch(run, tracker, epoch, step_start, failed)
        skip = 0
        if stopped:
            break
        s.train_seconds += time.perf_counter() - tick
        done = validate_and_checkpoint(run, tracker, epoch, len(order), on_validation)
        _say_validation(label, run, epoch, len(order), losses, time.perf_counter() - epoch_start)
        if done:
            stopped = True
            break
    return _result(run, stopped, system)


class _LossMeans:
    """Group-weighted means of the training loss: over the epoch so far, and since the last log step.

    Sums stay on the device (no sync per batch); a step redone after an out-of-memory drops its part.
    """

    def __init__(self, device) -> None:
        self.device = device
        self.epoch = self.window = self.step = None
        self.epoch_n = self.window_n = self.step_n = 0

    def _zero(self):
        return torch.zeros((), dtype=torch.float64, device=self.device)

    def new_epoch(self) -> None:
        self.epoch, self.epoch_n = self._zero(), 0
        self.step, self.step_n = self._zero(), 0
        if self.window is None:
            self.window, self.window_n = self._zero(), 0

    def add(self, loss, groups: int) -> None:
        self.step += loss.detach().double() * groups
        self.step_n += groups

    def drop_step(self) -> None:
        self.step, self.step_n = self._zero(), 0

    def end_step(self) -> None:
        self.epoch += self.step
        self.window += self.step
        self.epoch_n += self.step_n
        self.window_n += self.step_n
        self.drop_step()

    def epoch_mean(self) -> float | None:
        return float(self.epoch) / self.epoch_n if self.epoch_n else None

    def window_mean(self) -> float:
        mean = float(self.window) / self.window_n if self.window_n else float("nan")
        self.window, self.window_n = self._zero(), 0
        return mean


def _say_validation(label: str | None, run: Run, epoch: int, batch_in_epoch: int, losses: _LossMeans,
                    seconds: float) -> None:
    """`train: epoch 2/10 step 120: loss 0.4123 (epoch mean) | val loss 0.39, macro_f1 0.5012 ... | 12.3 s`."""
    if label is None:
        return
    t, s = run.params.train, run.state
    where = f"epoch {epoch + 1}/{t.epochs}" + (f" ({batch_in_epoch}/{run.batches_per_epoch} batches)"
                                                if batch_in_epoch < run.batches_per_epoch else "")
    mean = losses.epoch_mean()
    val = ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in s.history[-1].items() if k.startswith("val/"))
    say(f"{label}: {where} step {s.step}: train loss {mean:.4f} (epoch mean) | val {val} | {seconds:.1f} s"
        if mean is not None else f"{label}: {where} step {s.step}: val {val} | {seconds:.1f} s")


def split_micro_batches(order: list[list[int]], start: int, splits: int) -> list[tuple]:
    """(micro-batch index, groups, first piece?, last piece?) from order[start:], each cut in `splits` pieces.

    The pieces are contiguous and differ in size by at most one, so an optimizer step trains exactly
    the groups it would with whole micro-batches, in the same order.
    """
    out = []
    for bi in range(start, len(order)):
        idx = order[bi]
        k = min(splits, len(idx))
        q, r = divmod(len(idx), k)
        bounds = [p * q + min(p, r) for p in range(k + 1)]
        out += [(bi, idx[bounds[p]:bounds[p + 1]], p == 0, p == k - 1) for p in range(k)]
    return out


@dataclass
class _StepStart:
    """Where the current optimizer step began: its first micro-batch, the counters and the RNG there."""

    batch: int
    groups: int
    tokens: int
    rng: tuple

    @classmethod
    def now(cls, run: Run, batch: int) -> _StepStart:
        cuda = torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None
        return cls(batch, run.state.train_groups, run.state.train_tokens, (torch.get_rng_state(), cuda))


def _check_can_halve(run: Run, epoch: int, groups: int, exc: BaseException) -> None:
    """Re-raise an out-of-memory as one clear error when the pass that ran out held a single group."""
    s, m = run.state, run.params.model
    if groups == 1:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"train: out of memory at step {s.step} (epoch {epoch + 1}) even with a micro-batch of 1 group; "
            f"lower model.max_length ({m.max_length}) or model.max_chunks ({m.max_chunks}), set "
            "model.gradient_checkpointing=true or train.precision=bf16, or use a smaller backbone "
            f"({first_line})"
        ) from exc


def _halve_micro_batch(run: Run, tracker, epoch: int, start: _StepStart, failed: int) -> None:
    """After an out-of-memory: free memory, halve the micro-batches, and go back to the step's first one.

    The step's partial gradients are dropped, and its group/token counts and RNG put back to where
    it began, so no group is trained twice or skipped and the step count does not change.
    """
    s = run.state
    run.optimizer.zero_grad(set_to_none=True)
    release_memory()
    s.train_groups, s.train_tokens = start.groups, start.tokens
    torch.set_rng_state(start.rng[0])
    if start.rng[1] is not None:
        torch.cuda.set_rng_state(start.rng[1], run.device)
    before = (s.forward_batch, s.forward_passes)
    s.micro_splits *= 2
    tracker.event("out_of_memory", step=s.step, epoch=epoch + 1, micro_batch=s.forward_batch,
                  accumulation=s.forward_passes, previous_micro_batch=before[0],
                  previous_accumulation=before[1], failed_pass_groups=failed)
    log.warning("train: out of memory at step %d (epoch %d): micro-batch %d -> %d, accumulation %d -> %d, "
                "redoing the step", s.step, epoch + 1, before[0], s.forward_batch, before[1],
                s.forward_passes)


def _log_start(run: Run, tracker) -> dict:
    """The run's resume point, system info and params, once at the start; returns the system info."""
    p, s = run.params, run.state
    if run.resumed_from is not None:
        tracker.event("resume", checkpoint=str(run.resumed_from), step=s.step, epoch=s.epoch + 1)
    info = system_info(run.device, p.numerics.cpu_isa) | {"threads_rule": run.threads_rule}
    tracker.event("system", **info)
    # tags, not params: a resumed run may get another share of the cores
    tracker.set_tags({"dsm5lab.threads": info["threads"], "dsm5lab.threads_rule": run.threads_rule})
    tracker.log_params({**flatten(p.model_dump(include={"seed", "model", "train"})), "data.source": p.data.source,
                        "train.micro_batch": s.micro_batch, "train.accumulation": s.accumulation})
    return info


def _resume_point(run: Run, tracker, epoch: int, batch_in_epoch: int, seconds: float) -> None:
    """On a deferred stop at a step boundary: a checkpoint `--resume` continues from (no validation score, so it
    never counts as best; the run's last-N keeps it), if the run has gone on for stopping.RESUME_AFTER_S and
    trained a step since its last checkpoint."""
    s = run.state
    latest = run.manager.latest
    if seconds < stopping.RESUME_AFTER_S or (latest is not None and latest.name == f"step-{s.step:08d}"):
        return
    s.epoch, s.batch_in_epoch = epoch, batch_in_epoch
    path = run.manager.save(run.model, step=s.step, epoch=epoch, score=None,
                            metric=run.params.train.early_stopping.metric, optimizer=run.optimizer,
                            scheduler=run.scheduler, scaler=run.scaler, state=s.to_dict(),
                            config={"spec": run.model.spec.to_dict(), "backbone": run.params.model.backbone})
    tracker.event("resume_point", checkpoint=str(path), step=s.step, epoch=epoch + 1, reason=stopping.requested())


def validate_and_checkpoint(run: Run, tracker, epoch: int, batch_in_epoch: int, on_validation: OnValidation | None) -> bool:
    """Validate, log, checkpoint; return True when early stopping says stop."""
    t, s = run.params.train, run.state
    pred = predict(run.model, run.val_groups, t.eval_batch_size, run.pad_id, run.device, t.precision,
                   run.params, run.weights)
    metrics = validation_metrics(run.val_groups, pred, run.val_posts, t.task)
    progress_epochs = epoch + batch_in_epoch / run.batches_per_epoch
    tracker.log_metrics({**metrics, "train/epoch": progress_epochs}, step=s.step)
    s.history.append({"step": s.step, "epoch": epoch, **metrics})
    metric, es = t.early_stopping.metric, t.early_stopping
    score = metrics[metric]
    # min_delta decides patience; the checkpoint manager decides "best"
    if s.best_score is None:
        better = True
    elif mode_for(metric) == "max":
        better = score > s.best_score + es.min_delta
    else:
        better = score < s.best_score - es.min_delta
    if math.isfinite(score) and better:
        s.best_score, s.bad_evals = score, 0
    else:
        s.bad_evals += 1
    s.epoch, s.batch_in_epoch = epoch, batch_in_epoch
    run.manager.save(run.model, step=s.step, epoch=epoch, score=score, metric=metric, optimizer=run.optimizer,
                     scheduler=run.scheduler, scaler=run.scaler, state=s.to_dict(),
                     config={"spec": run.model.spec.to_dict(), "backbone": run.params.model.backbone})
    stop = s.bad_evals >= es.patience
    if on_validation is not None:  # e.g. an HPO trial reporting and pruning (it may raise to stop the run)
        final = stop or (epoch == t.epochs - 1 and batch_in_epoch >= run.batches_per_epoch)
        on_validation(s.step, {**metrics, "train/epoch": progress_epochs}, final)
    return stop


def _result(run: Run, stopped: bool, system: dict) -> TrainResult:
    s, manager = run.state, run.manager
    secs = max(s.train_seconds, 1e-9)
    throughput = {"samples_per_s": s.train_groups / secs, "tokens_per_s": s.train_tokens / secs,
                  "train_seconds": s.train_seconds, "micro_batch": s.forward_batch,
                  "accumulation": s.forward_passes}
    has_criteria = run.model.spec.has_criteria
    chance = chance_macro_f1(run.val_posts[list(SYMPTOMS)].to_numpy()) if has_criteria else None
    best_step = next((r["step"] for r in manager.records if manager.best and r["path"] == manager.best.name), None)
    best = next(({"step": h["step"], "epoch": h["epoch"], **{k: v for k, v in h.items() if k.startswith("val/")}}
                 for h in s.history if h["step"] == best_step), {})
    return TrainResult(
        best=best, history=s.history, steps=s.step, stopped_early=stopped,
        epochs_run=(s.history[-1]["epoch"] + 1) if s.history else 0, throughput=throughput,
        chance_macro_f1=chance, best_checkpoint=manager.best,
        n_parameters=sum(p.numel() for p in run.model.parameters()), system=system,
    )


def export_best(run: Run, result: TrainResult, out: Path) -> None:
    """Load the best checkpoint into the run's model and write it as a self-contained model directory."""
    from dsm5lab.models.saved import export_model
    from dsm5lab.training.checkpoint import load_checkpoint

    if result.best_checkpoint is None:
        return
    load_checkpoint(result.best_checkpoint, run.model, restore_rng=False)
    trained_with = {"seed": run.params.seed, "model": run.params.model.model_dump(mode="json"),
                    "train": run.params.train.model_dump(mode="json")}
    export_model(out, run.model, run.tokenizer, run.windower.spec, run.criteria, result, run.params.model.backbone,
                 trained_with)
