"""The `hf` source: a local dataset directory loads offline; a Hub id that is not cached fails clearly."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import QUIRKY_ANNOTATIONS, QUIRKY_POSTS
from dsm5lab.config import HFConfig
from dsm5lab.data.sources import read_hf
from dsm5lab.errors import UserError


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def hf_cfg(dataset: str, **kw) -> HFConfig:
    base = dict(
        dataset=dataset, revision=None, posts_file="redsm5_posts.csv",
        annotations_file="redsm5_annotations.csv", posts_split=None, annotations_split=None,
    )
    return HFConfig(**{**base, **kw})


@pytest.fixture
def saved_dataset(tmp_path):
    import datasets

    posts = pd.DataFrame(QUIRKY_POSTS, columns=["post_id", "text"])
    ann = pd.DataFrame(
        QUIRKY_ANNOTATIONS, columns=["post_id", "sentence_id", "sentence_text", "DSM5_symptom", "status", "explanation"]
    ).astype({"status": int})
    dd = datasets.DatasetDict(
        {"redsm5_posts": datasets.Dataset.from_pandas(posts), "redsm5_annotations": datasets.Dataset.from_pandas(ann)}
    )
    path = tmp_path / "redsm5-hf"
    dd.save_to_disk(str(path))
    return path


def test_local_saved_dataset_loads_offline(offline, saved_dataset):
    bundle = read_hf(hf_cfg(str(saved_dataset)))
    assert len(bundle.posts) == len(QUIRKY_POSTS)
    assert len(bundle.annotations) == len(QUIRKY_ANNOTATIONS) - 1  # one exact duplicate rejected
    assert set(bundle.annotations["status"]) == {0, 1}
    assert bundle.origin.startswith("hf:")


def test_local_csv_directory_loads_offline(offline, quirky_dir):
    bundle = read_hf(hf_cfg(str(quirky_dir)))
    assert sorted(bundle.posts["post_id"]) == sorted(p for p, _ in QUIRKY_POSTS)


def test_prepare_runs_on_hf_source(offline, saved_dataset, workdir, cli):
    result = cli(
        "prepare", "--set", "data.source=hf", "--set", f"data.hf.dataset={saved_dataset}",
        "--set", "prepare.require_all_criteria=false", "--set", "prepare.split.train=0.5",
        "--set", "prepare.split.val=0.25", "--set", "prepare.split.test=0.25", "--set", "prepare.n_folds=2",
    )
    assert result.exit_code == 0, result.output
    assert (workdir / "stages/prepare/posts.parquet").is_file()


def test_named_split_that_does_not_exist(offline, saved_dataset):
    with pytest.raises(UserError, match="no split 'train' in .*splits: redsm5_posts, redsm5_annotations"):
        read_hf(hf_cfg(str(saved_dataset), posts_split="train"))


def test_hub_id_not_cached_offline(offline):
    with pytest.raises(UserError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        read_hf(hf_cfg("irlab-udc/redsm5"))


def test_gated_dataset_message():
    from dsm5lab.data.sources import _hf_error

    exc = ConnectionError("Dataset 'irlab-udc/redsm5' is a gated dataset on the Hub. You must be authenticated to access it.")
    msg = str(_hf_error(exc, "irlab-udc/redsm5"))
    assert "is gated on the Hub" in msg and "https://huggingface.co/datasets/irlab-udc/redsm5" in msg


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """No HF_HUB_OFFLINE, an empty cache, and a Hub endpoint where nothing listens (a machine without network)."""
    from dsm5lab import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hub, "_reachable", {})
    # the libraries as a process that imported them without HF_HUB_OFFLINE sees them
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return hub


def test_unreachable_hub_reads_the_cache_only_and_says_why(unreachable_hub, monkeypatch):
    """Without network the Hub id goes straight to the cache (no library retries), and the line says why."""
    import datasets

    seen, before = [], datasets.config.HF_HUB_OFFLINE

    def load_dataset(*args, **kwargs):
        seen.append(datasets.config.HF_HUB_OFFLINE)
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(UserError, match=r"not in the local Hugging Face cache and the Hub \(http://127.0.0.1:9\) "
                                        "cannot be reached"):
        read_hf(hf_cfg("irlab-udc/redsm5"))
    assert seen == [True] and datasets.config.HF_HUB_OFFLINE == before  # cache-only while called, then restored


def test_cache_only_restores_the_libraries_setting(unreachable_hub):
    import datasets
    from huggingface_hub import constants

    before = (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    with unreachable_hub.cache_only():
        assert constants.HF_HUB_OFFLINE is True and datasets.config.HF_HUB_OFFLINE is True
    assert (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == before
    assert not unreachable_hub.reachable() and unreachable_hub.offline()
