"""`dsm5lab evaluate --ensemble`: the tracked best-K checkpoints scored as one model, outside the pipeline.

Each member predicts val and test as `evaluate` does; the ensemble averages their post-level criteria and
per-sentence evidence probabilities, takes each evidence span from the member that scores it highest, and
tunes its own thresholds on val. Everything goes under out_dir; pipeline outputs are never touched.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from dsm5lab import atomic, layout
from dsm5lab.config import Params
from dsm5lab.errors import UserError
from dsm5lab.evaluation import stage
from dsm5lab.evaluation.views import SplitPredictions
from dsm5lab.models.saved import ASSETS

INDEX = "index.json"  # the retention stage's list of its tracked set (dsm5lab.retention.INDEX)
# every stage's outs (dvc.yaml): writing there would change an output DVC tracks
PIPELINE_OUTS = (layout.PREPARED.parent, layout.EVALUATE_METRICS.parent, layout.PREPARE_REPORTS, layout.HPO_REPORTS,
                 layout.TRAIN_LIVE.parent, layout.EVALUATE_REPORTS, layout.RETENTION_MANIFEST.parent)


def members(members_dir: Path, top_k: int | None = None) -> list[dict]:
    """The ranked entries of a tracked set's index.json, best first, at most top_k; one-line errors otherwise."""
    members_dir = Path(members_dir)
    index = members_dir / INDEX
    expected = "a tracked set as the retention stage writes it (`dvc repro retention` fills stages/retention)"
    if not index.is_file():
        raise UserError(f"{index}: no such file; --ensemble expects {expected}")
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{index}: not valid JSON ({exc}); expected a list of tracked checkpoints") from None
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("path"), str) and "rank" in e
            and (e["rank"] is None or type(e["rank"]) is int) for e in entries):
        raise UserError(f"{index}: expected a JSON list of entries with 'rank' and 'path' (as retention writes)")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be at least 1 (got {top_k})")
    ranked = sorted((e for e in entries if e["rank"] is not None), key=lambda e: e["rank"])[:top_k]
    if not ranked:
        raise UserError(f"{index}: no ranked checkpoints (only last-N-only entries or none); nothing to ensemble")
    for e in ranked:
        if not (members_dir / e["path"] / "model.safetensors").is_file():
            raise UserError(f"{members_dir / e['path']}: tracked member (rank {e['rank']}) missing or without "
                            f"model.safetensors; run `dvc checkout {members_dir}` or `dvc repro retention`")
    return ranked


def _assets_config(member: Path) -> dict:
    """A member's model config, read without loading its weights (the layout models.saved.load_model reads)."""
    assets = member if (member / "encoder").is_dir() else member.parent / ASSETS
    path = assets / "config.json"
    if not path.is_file():
        raise UserError(f"{member}: no model config (looked for {path})")
    return json.loads(path.read_text())


def check_heads(configs: list[dict], paths: list[Path]) -> None:
    """Members must share task and level: a mean over members that lack a head would not be a mean."""
    first = (configs[0]["spec"]["task"], configs[0]["encode"]["level"])
    for config, path in zip(configs[1:], paths[1:]):
        this = (config["spec"]["task"], config["encode"]["level"])
        if this != first:
            raise UserError(f"{path}: task/level {'/'.join(this)} differs from the best member's "
                            f"{'/'.join(first)} ({paths[0]}); ensemble members must have the same heads")


def average(preds: list[SplitPredictions]) -> SplitPredictions:
    """Members' predictions on one split as one: mean probabilities, each span from the member scoring it highest."""
    first = preds[0]
    for p in preds[1:]:
        if (p.posts["post_id"].tolist() != first.posts["post_id"].tolist() or not np.array_equal(p.gold, first.gold)
                or len(p.sentences) != len(first.sentences)
                or any(not np.array_equal(a[0], b[0]) or not np.array_equal(a[2], b[2])
                       for a, b in zip(p.sentences, first.sentences))):
            raise UserError(f"ensemble: the members' {first.name} predictions do not line up (posts or sentences "
                            "differ); were they scored on the same prepared data?")
        if (p.prob is None) != (first.prob is None) or (p.spans is None) != (first.spans is None):
            raise UserError(f"ensemble: the members' {first.name} predictions have different heads")
    prob = None if first.prob is None else np.mean(np.stack([p.prob for p in preds]), axis=0)
    sentences = [(g, np.mean(np.stack([p.sentences[i][1] for p in preds]), axis=0), char)
                 for i, (g, _, char) in enumerate(first.sentences)]
    spans = None
    if first.spans is not None:
        stacked = np.stack([p.spans for p in preds])  # (members, posts, 9, 3)
        best = np.argmax(stacked[..., 2], axis=0)  # ties go to the better-ranked member
        spans = np.take_along_axis(stacked, best[None, ..., None], axis=0)[0]
    return replace(first, prob=prob, sentences=sentences, spans=spans,
                   beyond_cap=max(p.beyond_cap for p in preds))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def delta(ensemble: dict, single: dict) -> dict:
    """Ensemble minus single best, per dotted headline key (None where either is None)."""
    a, b = _flat(ensemble), _flat(single)
    return {k: None if a[k] is None or b.get(k) is None else round(a[k] - b[k], 6) for k in a}


def _model_block(members_dir: Path, paths: list[Path], configs: list[dict]) -> dict:
    hashes = [atomic.sha256_file(p / "model.safetensors") for p in paths]
    formats = {c["encode"]["input_format"] for c in configs}
    return {
        "path": str(members_dir),
        "sha256": hashlib.sha256("".join(hashes).encode()).hexdigest(),
        "sha256_of": "the members' model.safetensors sha256 hex digests, concatenated best first",
        "backbone": " + ".join(dict.fromkeys(str(c.get("backbone")) for c in configs)),
        "task": configs[0]["spec"]["task"],
        "input_format": formats.pop() if len(formats) == 1 else "mixed",
        "level": configs[0]["encode"]["level"],
        "members": [{"path": str(p), "sha256": h} for p, h in zip(paths, hashes)],
    }


def summary_markdown(result: dict) -> str:
    """The table `evaluate --ensemble` prints: each headline number, single best vs ensemble."""
    def f(x):
        return "n/a" if x is None else f"{x:.4f}"

    single, ens = _flat(result["single_best"]["headline"]), _flat(result["ensemble"]["headline"])
    n = len(result["members"])
    lines = [f"# Ensemble of {n} tracked checkpoint(s): {result['ensemble']['report']['model']['path']}", "",
             "Members (best first): " + ", ".join(f"{m['path']} ({m['metric']} {f(m['score'])})"
                                                  for m in result["members"]) + ".",
             "All numbers on the test split; thresholds tuned on val (each model its own).", "",
             "| key | single best | ensemble | delta |", "|---|---|---|---|"]
    lines += [f"| {k} | {f(single.get(k))} | {f(v)} | {f(result['delta'][k])} |" for k, v in ens.items()]
    return "\n".join(lines) + "\n"


def _check_out(root: Path, members_dir: Path, out_dir: Path) -> None:
    out = out_dir.resolve()
    for guarded in (*[root / p for p in PIPELINE_OUTS], members_dir):
        g = guarded.resolve()
        if out == g or g in out.parents:
            raise UserError(f"--out {out_dir}: inside {guarded}, which the ensemble must not touch; "
                            "pick another folder (default reports/ensemble)")


def run(params: Params, root: Path, members_dir: Path, out_dir: Path, top_k: int | None = None) -> dict:
    """Evaluate the top_k ranked members of a tracked set as one averaged model; write the comparison to out_dir."""
    root, members_dir, out_dir = Path(root), Path(members_dir), Path(out_dir)
    _check_out(root, members_dir, out_dir)
    entries = members(members_dir, top_k)
    paths = [members_dir / e["path"] for e in entries]
    configs = [_assets_config(p) for p in paths]
    check_heads(configs, paths)
    settings = stage.Settings.of(params)
    vals, tests = [], []
    for path in paths:
        _, manifest, val, test = stage.predict_val_test(root, path, settings)
        vals.append(val)
        tests.append(test)

    best = stage.build_report(params, paths[0], configs[0], manifest, vals[0], tests[0], settings)
    stage.validate_report(best)
    # the windows block and its note use the smallest training cap among the members
    cap = min(int(c["encode"]["max_chunks"]) for c in configs)
    config = {**configs[0], "encode": {**configs[0]["encode"], "max_chunks": cap}}
    report = stage.build_report(params, paths[0], config, manifest, average(vals), average(tests), settings)
    report["model"] = _model_block(members_dir, paths, configs)
    report["config"]["ensemble"] = {"members_dir": str(members_dir), "top_k": top_k, "n_members": len(paths)}
    report["notes"] += [
        f"Ensemble of {len(paths)} tracked checkpoint(s) of {members_dir}, best first by their validation score: "
        "post-level criteria probabilities and per-sentence evidence probabilities are the mean over members; "
        "its thresholds are tuned on the validation split for the mean probabilities.",
        "Evidence spans: per post and criterion, the span of the member with the highest span score "
        "(span scores are not averaged).",
    ]
    specs = {json.dumps({k: c["encode"].get(k) for k in ("max_length", "stride", "max_chunks")}) for c in configs}
    if len(specs) > 1 or len({str(c.get("backbone")) for c in configs}) > 1:
        report["notes"].append("Members differ in backbone or window spec (" + "; ".join(sorted(specs)) + "): the "
                               "windows block uses the smallest training cap and the largest member count of "
                               "posts beyond a member's own cap.")
    stage.validate_report(report)
    single, ens = stage.headline(best), stage.headline(report)
    result = {
        "members": [{k: e.get(k) for k in ("path", "run", "step", "score", "metric", "rank")} for e in entries],
        "single_best": {"path": str(paths[0]), "headline": single},
        "ensemble": {"headline": ens, "report": report},
        "delta": delta(ens, single),
    }
    atomic.write_json(out_dir / "ensemble_report.json", result)
    atomic.write_text(out_dir / "summary.md", summary_markdown(result))
    atomic.write_json(out_dir / "metrics.json", ens)
    return result
