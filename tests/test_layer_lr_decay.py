"""train.layer_lr_decay: the encoder's layer k below the top trains at lr * decay^k, embeddings lowest."""

from __future__ import annotations

import pytest
from torch import nn

from dsm5lab.errors import UserError
from dsm5lab.models.multitask import ModelSpec, MultiTaskModel
from dsm5lab.training.optim import layer_depths, param_groups

LR, WD, HEAD = 1e-3, 0.01, 10.0
SPEC = ModelSpec(task="joint", channels=9, pooling="attention", criteria_head="linear",
                 evidence_head="start_end_linear", hidden_dim=16, dropout=0.1, coupling="independent",
                 max_span_tokens=8)


@pytest.fixture(scope="module")
def model():
    """The tiny BERT of the default pipeline (3 layers here), with both heads."""
    from transformers import BertConfig, BertModel

    encoder = BertModel(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=64))
    return MultiTaskModel(encoder, 16, SPEC)


def _lr_of(groups: list[dict]) -> dict[int, float]:
    out = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in out, "a parameter is in two groups"
            out[id(p)] = g["lr"]
    return out


def test_decay_one_leaves_the_four_groups_as_before(model):
    groups = param_groups(model, LR, WD, HEAD, layer_lr_decay=1.0)
    assert groups == param_groups(model, LR, WD, HEAD)
    assert [g["name"] for g in groups] == ["encoder/no_decay", "encoder/decay", "head/no_decay", "head/decay"]
    assert [g["lr"] for g in groups] == [LR, LR, LR * HEAD, LR * HEAD]
    assert [g["weight_decay"] for g in groups] == [0.0, WD, 0.0, WD]
    assert len(_lr_of(groups)) == len(list(model.parameters()))


def test_group_lrs_follow_decay_to_the_power_of_depth(model):
    decay = 0.5
    groups = param_groups(model, LR, WD, HEAD, layer_lr_decay=decay)
    lr = _lr_of(groups)
    assert len(lr) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        if name.startswith("encoder.encoder.layer."):
            k = 2 - int(name.split(".")[3])  # layer 2 is the top: k = 0
            expected = LR * decay ** k
        elif name.startswith("encoder.embeddings."):
            expected = LR * decay ** 3  # below the lowest layer
        elif name.startswith("encoder."):
            expected = LR  # the pooler sits above the top layer
        else:
            expected = LR * HEAD
        assert lr[id(p)] == pytest.approx(expected), name
    assert groups[0]["lr"] == LR and groups[0]["name"] == "encoder/depth_0/no_decay"  # what train/lr logs
    # weight decay still spares biases and norms at every depth
    for g in groups:
        assert g["weight_decay"] == (WD if g["name"].endswith("/decay") else 0.0)


def test_the_scheduler_keeps_the_ratios(model):
    from types import SimpleNamespace

    from dsm5lab.training.optim import build_optimizer

    cfg = SimpleNamespace(learning_rate=LR, weight_decay=WD, head_lr_multiplier=1.0, layer_lr_decay=0.8,
                          warmup_ratio=0.0, scheduler="linear")
    optimizer, scheduler = build_optimizer(model, cfg, total_steps=10)
    optimizer.step()
    scheduler.step()
    lrs = scheduler.get_last_lr()
    assert lrs[0] == pytest.approx(LR * 0.9)
    assert min(lrs) == pytest.approx(LR * 0.9 * 0.8 ** 3)  # embeddings


def test_layer_patterns_of_other_families():
    modernbert = ["encoder.embeddings.tok_embeddings.weight", "encoder.layers.0.attn.Wqkv.weight",
                  "encoder.layers.1.mlp.Wo.weight", "encoder.final_norm.weight"]
    assert layer_depths(modernbert) == dict(zip(modernbert, [2, 1, 0, 0]))
    distilbert = ["encoder.embeddings.word_embeddings.weight", "encoder.transformer.layer.0.ffn.lin1.weight",
                  "encoder.transformer.layer.5.ffn.lin1.weight"]
    assert layer_depths(distilbert) == dict(zip(distilbert, [6, 5, 0]))
    assert layer_depths(["encoder.weight", "encoder.bias"]) == {}


class _NoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)

    def head_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("encoder.")]


def test_decay_on_an_encoder_without_numbered_layers_is_a_clear_error():
    assert len(param_groups(_NoLayers(), LR, WD, 1.0, layer_lr_decay=1.0)) == 4
    with pytest.raises(UserError) as err:
        param_groups(_NoLayers(), LR, WD, 1.0, layer_lr_decay=0.8)
    assert str(err.value).startswith("train.layer_lr_decay: 0.8 needs an encoder with numbered layers")
    assert "Linear has none" in str(err.value)


@pytest.mark.parametrize("value", [0.0, 1.2])
def test_the_schema_bounds_layer_lr_decay(value):
    from conftest import ROOT
    from dsm5lab.config import load_params

    with pytest.raises(UserError, match="train.layer_lr_decay"):
        load_params(ROOT / "params.yaml", [f"train.layer_lr_decay={value}"])
