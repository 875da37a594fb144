"""Running a model over encoded groups, and turning its outputs into validation metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from dsm5lab.config import Params
from dsm5lab.data.labels import SYMPTOMS
from dsm5lab.device import autocast_for, to_device
from dsm5lab.metrics import multilabel_f1
from dsm5lab.training.encoding import Group, bucket_batches, collate
from dsm5lab.training.multitask_loss import multitask_loss

# Validation metrics a run computes (validation_metrics); train.early_stopping.metric and HPO objectives pick one.
VAL_METRICS = {
    "criteria": ("val/loss", "val/macro_f1", "val/micro_f1", "val/score"),
    "evidence": ("val/loss", "val/sentence_macro_f1", "val/sentence_micro_f1", "val/score"),
    "joint": ("val/loss", "val/macro_f1", "val/micro_f1", "val/sentence_macro_f1", "val/sentence_micro_f1", "val/score"),
}


EVERY_WINDOW = 10**9  # max_chunks that no post reaches: the whole post is read


def load_for_inference(model_dir, max_chunks: int | None = None):
    """A saved model on the device it will run on, its Windower, config and criteria (evaluate and predict).

    The windower reads at most `max_chunks` windows per post; None (the default) reads every window,
    whatever cap training used (model.max_chunks), so no part of a long post goes unscored.
    """
    from dsm5lab.device import pick_device
    from dsm5lab.models.saved import load_model
    from dsm5lab.training.encoding import Windower, WindowSpec

    model, tokenizer, config, criteria = load_model(model_dir)
    spec = WindowSpec(**{**config["encode"], "max_chunks": max_chunks or EVERY_WINDOW})
    windower = Windower(tokenizer, spec, [c.description for c in criteria])
    return model.to(pick_device()), windower, config, criteria


def batches_by_windows(groups: list[Group], batch_size: int, window_budget: int | None) -> list[list[int]]:
    """Groups sorted by length, cut into batches of at most batch_size groups and batch_size x window_budget
    windows (a post longer than that is a batch of its own), so uncapped posts keep memory where training had it."""
    order = [i for batch in bucket_batches([g.n_tokens for g in groups], len(groups) or 1, None) for i in batch]
    if window_budget is None:
        return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    limit = batch_size * window_budget
    batches: list[list[int]] = []
    windows = 0
    for i in order:
        n = len(groups[i].windows)
        if not batches or len(batches[-1]) >= batch_size or windows + n > limit:
            batches.append([])
            windows = 0
        batches[-1].append(i)
        windows += n
    return batches


@torch.no_grad()
def predict(model, groups: list[Group], batch_size: int, pad_id: int, device, precision: str,
            params: Params | None = None, weights: dict | None = None, spans: bool = False,
            window_budget: int | None = None) -> dict:
    """Probabilities per group (G, C), sentence probabilities per group, the mean loss if params are given,
    and with `spans` the best evidence span per group and channel as (G, C, 3) [char start, char end, score]
    (-1, -1, 0 when none), the best over the group's windows. `window_budget`: see batches_by_windows."""
    model.eval()
    kind = model.spec.evidence_head if model.spec.has_evidence else None
    probs = np.zeros((len(groups), model.spec.channels), dtype=np.float32)
    sent_probs: list[np.ndarray | None] = [None] * len(groups)
    best = np.tile(np.array([-1.0, -1.0, 0.0], dtype=np.float32), (len(groups), model.spec.channels, 1))
    losses, sizes = [], []
    for idx in batches_by_windows(groups, batch_size, window_budget):
        batch = to_device(collate([groups[i] for i in idx], pad_id, kind, model.spec.max_span_tokens), device)
        with autocast_for(device, precision):
            out = model(batch)
            if params is not None:
                loss, _ = multitask_loss(out, batch, model, params, weights)
                losses.append(loss.item())
                sizes.append(len(idx))
        if "logits" in out:
            probs[idx] = torch.sigmoid(out["logits"].float()).cpu().numpy()
        if "sentence_logits" in out:
            sp = torch.sigmoid(out["sentence_logits"].float()).cpu().numpy()
            owner = batch["sentence_group"].cpu().numpy()
            for local, gi in enumerate(idx):
                sent_probs[gi] = sp[owner == local]
        if spans and "evidence" in out:
            decoded = model.evidence_head.decode(out["evidence"], batch["text_mask"]).float().cpu().numpy()
            windows = [(gi, w) for gi in idx for w in groups[gi].windows]
            for (gi, window), per_channel in zip(windows, decoded):
                _keep_best_spans(best[gi], window.offsets, per_channel)
    model.train()
    mean_loss = float(np.average(losses, weights=sizes)) if losses else float("nan")
    out = {"probs": probs, "sentence_probs": sent_probs, "loss": mean_loss}
    if spans:
        out["spans"] = best
    return out


def _keep_best_spans(best: np.ndarray, offsets: np.ndarray, decoded: np.ndarray) -> None:
    """Update best (C, 3) char spans with a window's decoded token spans (C, 3) where they score higher."""
    for c, (s, e, score) in enumerate(decoded):
        s, e = int(s), int(e)
        if s < 0 or score <= best[c, 2] or offsets[s, 0] < 0 or offsets[e, 1] < 0:
            continue
        best[c] = (offsets[s, 0], offsets[e, 1], score)


def post_matrix(groups: list[Group], values: np.ndarray, post_ids: list[str]) -> np.ndarray:
    """Post x criterion matrix from group values: max over a post's groups (windows, sentences or pairs)."""
    row = {pid: i for i, pid in enumerate(post_ids)}
    out = np.zeros((len(post_ids), len(SYMPTOMS)), dtype=np.float32)
    for g, v in zip(groups, values):
        cols = slice(None) if g.criterion < 0 else slice(g.criterion, g.criterion + 1)
        out[row[g.post_id], cols] = np.maximum(out[row[g.post_id], cols], v)
    return out


def sentence_matrix(groups: list[Group], sent_probs: list) -> tuple[np.ndarray, np.ndarray]:
    """Stacked (sentences x criteria) gold labels and probabilities over all posts of the groups."""
    per_post: dict[str, list] = {}
    for g, sp in zip(groups, sent_probs):
        gold, prob = per_post.setdefault(g.post_id, [np.zeros((len(g.sentence_labels), len(SYMPTOMS))), np.zeros((len(g.sentence_labels), len(SYMPTOMS)))])
        cols = slice(None) if g.criterion < 0 else slice(g.criterion, g.criterion + 1)
        gold[:, cols] = g.sentence_labels
        if sp is not None:
            prob[:, cols] = sp
    golds = [v[0] for v in per_post.values()]
    probs = [v[1] for v in per_post.values()]
    return np.concatenate(golds), np.concatenate(probs)


def validation_metrics(groups, pred, val_posts: pd.DataFrame, task: str) -> dict:
    """Post-level criteria F1 (threshold 0.5, macro over criteria present) and sentence-level evidence F1."""
    metrics = {"val/loss": pred["loss"]}
    scores = []
    if task in ("criteria", "joint"):
        ids = val_posts["post_id"].tolist()
        gold = val_posts[list(SYMPTOMS)].to_numpy()
        f1 = multilabel_f1(gold, post_matrix(groups, pred["probs"], ids) >= 0.5)
        metrics.update({"val/macro_f1": f1["macro"], "val/micro_f1": f1["micro"]})
        scores.append(f1["macro"])
    if task in ("evidence", "joint"):
        gold, prob = sentence_matrix(groups, pred["sentence_probs"])
        f1 = multilabel_f1(gold, prob >= 0.5)
        metrics.update({"val/sentence_macro_f1": f1["macro"], "val/sentence_micro_f1": f1["micro"]})
        scores.append(f1["macro"])
    metrics["val/score"] = float(np.mean(scores))
    return metrics
