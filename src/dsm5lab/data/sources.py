"""The three data sources behind one interface: `load_bundle(data_cfg)` -> RawBundle."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pandas as pd

from dsm5lab import hub
from dsm5lab.config import DataConfig, HFConfig
from dsm5lab.data.raw import RawBundle, read_csv_dir, validate_bundle
from dsm5lab.errors import UserError


def load_bundle(cfg: DataConfig) -> RawBundle:
    """Load and validate the ReDSM5 bundle that `data.source` names."""
    return SOURCES[cfg.source](cfg)


def read_synthetic(cfg: DataConfig) -> RawBundle:
    """Generate the synthetic bundle as CSV files and read it back through the CSV reader."""
    from dsm5lab.data.synthetic import write_bundle

    with tempfile.TemporaryDirectory(prefix="dsm5lab-synthetic-") as tmp:
        write_bundle(cfg.synthetic, Path(tmp))
        bundle = read_csv_dir(Path(tmp))
    s = cfg.synthetic
    bundle.origin = f"synthetic:n_posts={s.n_posts},seed={s.seed}"
    return bundle


def _hf_error(exc: Exception, dataset: str, offline: bool = False) -> UserError:
    text = f"{type(exc).__name__}: {exc}"
    if "gated" in text.lower() or "authenticated" in text.lower():
        return UserError(
            f"data.hf.dataset: {dataset!r} is gated on the Hub: accept its terms at "
            f"https://huggingface.co/datasets/{dataset} and log in (`hf auth login` or HF_TOKEN)"
        )
    if offline:
        return UserError(
            f"data.hf.dataset: {dataset!r} is not in the local Hugging Face cache and {hub.why_offline()}; "
            "download it once online, point data.hf.dataset at a local dataset directory, or use data.source=csv"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"data.hf.dataset: cannot load {dataset!r}: {first}")


def _load_splits(cfg: HFConfig) -> dict:
    """Name -> datasets.Dataset for the posts and the annotations.

    A `save_to_disk` folder is opened as is. Anything else (a Hub id, a local folder of
    files) is read one file at a time: the two ReDSM5 CSVs have different columns, so
    reading the repository as one config fails with DatasetGenerationCastError.
    """
    import datasets

    from dsm5lab.progress import quiet

    if quiet():
        datasets.disable_progress_bars()
    path = Path(cfg.dataset)
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        dd = datasets.load_from_disk(str(path))
        return {name: dd[name] for name in dd.keys()}
    out = {}
    # a Hub id with no network: the cache only, at once, instead of the libraries' retries
    offline = not path.is_dir() and hub.offline()
    with hub.cache_only() if offline else contextlib.nullcontext():
        for kind, data_file in (("posts", cfg.posts_file), ("annotations", cfg.annotations_file)):
            extra = {"keep_default_na": False, "encoding": "utf-8-sig"} if data_file.endswith(".csv") else {}
            source = str(path) if path.is_dir() else cfg.dataset
            ds = datasets.load_dataset(source, data_files=data_file, revision=cfg.revision, split="train", **extra)
            out[kind] = ds
    return out


def _pick_split(names: dict[str, list[str]], wanted: str | None, marker: str, kind: str, dataset: str) -> str:
    if wanted is not None:
        if wanted not in names:
            raise UserError(
                f"data.hf.{kind}_split: no split {wanted!r} in {dataset!r} (splits: {', '.join(names)})"
            )
        return wanted
    hits = [n for n, cols in names.items() if marker in cols and (kind == "annotations" or "DSM5_symptom" not in cols)]
    if len(hits) != 1:
        shown = "; ".join(f"{n}: {', '.join(c)}" for n, c in names.items())
        raise UserError(
            f"data.hf.{kind}_split: cannot tell which split holds the {kind} of {dataset!r} "
            f"(splits and columns: {shown}); set data.hf.{kind}_split"
        )
    return hits[0]


def read_hf(cfg: HFConfig) -> RawBundle:
    """Load ReDSM5 through `datasets`: a Hub id (honours HF_HUB_OFFLINE) or a local dataset directory."""
    try:
        dd = _load_splits(cfg)
    except Exception as exc:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ...)
        raise _hf_error(exc, cfg.dataset, not Path(cfg.dataset).is_dir() and hub.offline()) from None
    columns = {name: list(ds.column_names) for name, ds in dd.items()}
    posts_split = _pick_split(columns, cfg.posts_split, "text", "posts", cfg.dataset)
    ann_split = _pick_split(columns, cfg.annotations_split, "DSM5_symptom", "annotations", cfg.dataset)

    def frame(split: str) -> pd.DataFrame:
        df = dd[split].to_pandas()
        return df.astype(object).where(df.notna(), "").astype(str)

    return validate_bundle(
        frame(posts_split),
        frame(ann_split),
        posts_where=f"hf:{cfg.dataset}[{posts_split}]",
        annotations_where=f"hf:{cfg.dataset}[{ann_split}]",
        origin=f"hf:{cfg.dataset}" + (f"@{cfg.revision}" if cfg.revision else ""),
    )


# data.source -> reader of the data section
SOURCES = {
    "synthetic": read_synthetic,
    "csv": lambda cfg: read_csv_dir(Path(cfg.csv_dir)),
    "hf": lambda cfg: read_hf(cfg.hf),
}
