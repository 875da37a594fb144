"""The multi-task training loss (weighted criteria and evidence parts) and its class weights."""

from __future__ import annotations

import numpy as np
import torch

from dsm5lab.config import Params
from dsm5lab.models.multitask import MultiTaskModel
from dsm5lab.training.encoding import Group
from dsm5lab.training.losses import criteria_loss, pos_weight_from_counts


def class_weights(groups: list[Group], loss: str, device) -> dict:
    """pos_weight for weighted_bce from training counts: per channel for groups, and for evidence sentences."""
    if loss != "weighted_bce":
        return {"criteria": None, "sentence": None}
    labels = np.stack([g.labels for g in groups])
    out = {"criteria": pos_weight_from_counts(labels.sum(0).astype(int).tolist(), len(labels)).to(device),
           "sentence": None}
    sentences = [g.sentence_labels for g in groups if len(g.sentence_labels)]
    if sentences:
        s = np.concatenate(sentences)
        out["sentence"] = pos_weight_from_counts(s.sum(0).astype(int).tolist(), len(s)).to(device)
    return out


def multitask_loss(out: dict, batch: dict, model: MultiTaskModel, params: Params, weights: dict) -> tuple[torch.Tensor, dict]:
    """Weighted multi-task loss and its parts; `weights` are the class_weights of the training set."""
    t = params.train
    parts: dict[str, torch.Tensor] = {}
    if "logits" in out:
        parts["criteria"] = criteria_loss(
            t.loss, out["logits"].float(), batch["labels"], pos_weight=weights["criteria"], focal_gamma=t.focal_gamma,
            focal_alpha=t.focal_alpha, hybrid_weight=t.hybrid_weight, label_smoothing=t.label_smoothing,
        )
    if "evidence" in out:
        ev = {k: v.float() for k, v in out["evidence"].items()}
        parts["evidence"] = model.evidence_head.loss(
            ev, batch["evidence_targets"], batch["attention_mask"], batch["window_channel_mask"]
        )
        if "sentence_logits" in out:
            # sentences past max_chunks are in no window: their logit is -inf and they carry no loss
            logits = out["sentence_logits"].float()
            seen = torch.isfinite(logits).all(dim=1)
            parts["sentence"] = criteria_loss(
                t.loss, logits[seen], batch["sentence_labels"][seen], pos_weight=weights["sentence"],
                focal_gamma=t.focal_gamma, focal_alpha=t.focal_alpha, hybrid_weight=t.hybrid_weight,
            )
    total = t.criteria_loss_weight * parts.get("criteria", 0.0) + t.evidence_loss_weight * (
        parts.get("evidence", 0.0) + parts.get("sentence", 0.0)
    )
    return total, parts
