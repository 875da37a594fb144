"""Files that cannot be trusted or read: a corrupt or malicious trainer_state.pt on --resume, pickle-only
backbone weights, a safetensors file with a broken header. Each is one UserError line naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import default_params
from dsm5lab.config import validate
from dsm5lab.errors import UserError
from dsm5lab.training.checkpoint import load_checkpoint, peek_state, save_checkpoint

UNTRUSTED = r"checkpoint: .*trainer_state\.pt cannot be trusted or read \(\w+: .*\); delete it .*without --resume$"


def one_line(err) -> str:
    text = str(err.value)
    assert len(text.splitlines()) == 1, text
    return text


@pytest.fixture
def ckpt(tmp_path) -> Path:
    """A real checkpoint of a tiny model, with optimizer state."""
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "step-00000001", model, optimizer=optimizer, state={"step": 1}, config={})
    return tmp_path / "step-00000001"


def resume(path: Path) -> dict:
    """What build_run does on --resume: peek at the state, then load weights, optimizer and RNG."""
    peek_state(path)
    model = torch.nn.Linear(4, 3)
    return load_checkpoint(path, model, optimizer=torch.optim.AdamW(model.parameters()))


class Payload:
    """Unpickling this creates `marker`: what a malicious trainer_state.pt would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_pickle_payload_in_trainer_state_is_refused_and_never_runs(ckpt, tmp_path):
    marker = tmp_path / "payload-ran"
    real = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    torch.save({**real, "state": {"step": 1, "x": Payload(marker)}}, ckpt / "trainer_state.pt")
    assert not marker.exists()
    for load in (peek_state, resume):
        with pytest.raises(UserError, match=UNTRUSTED) as err:
            load(ckpt)
        assert f"{ckpt / 'trainer_state.pt'} cannot be trusted" in one_line(err)
        assert not marker.exists()


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize("corrupt", [
    pytest.param(_truncated, id="truncated"),
    pytest.param(lambda d: os.urandom(300), id="random-bytes"),
    pytest.param(lambda d: b"", id="empty"),
    pytest.param(lambda d: b"hello", id="text"),
])
def test_a_corrupt_trainer_state_is_one_line(ckpt, corrupt):
    file = ckpt / "trainer_state.pt"
    file.write_bytes(corrupt(file.read_bytes()))
    with pytest.raises(UserError, match=UNTRUSTED) as err:
        resume(ckpt)
    one_line(err)


def test_a_trainer_state_that_is_not_ours_is_one_line(ckpt):
    torch.save([1, 2, 3], ckpt / "trainer_state.pt")  # loads under weights_only, but is not a trainer state
    with pytest.raises(UserError, match=r"trainer_state\.pt is not a dsm5lab trainer state") as err:
        resume(ckpt)
    one_line(err)


@pytest.mark.parametrize("corrupt, reason", [
    pytest.param(lambda d: d[:-4], "incomplete metadata, file not fully covered", id="truncated-data"),
    pytest.param(lambda d: b"\xff" * 300, "header too large", id="garbage"),
    pytest.param(lambda d: d[:5], "header too small", id="truncated-header"),
])
def test_a_broken_safetensors_header_names_the_file(ckpt, corrupt, reason):
    from dsm5lab.models.saved import load_model

    file = ckpt / "model.safetensors"
    file.write_bytes(corrupt(file.read_bytes()))
    with pytest.raises(UserError) as err:  # resuming, or evaluate/predict loading the checkpoint as a model
        load_checkpoint(ckpt, torch.nn.Linear(4, 3), restore_rng=False)
    assert one_line(err) == (f"checkpoint: {file} is not a readable safetensors file ({reason}); it is truncated "
                             "or corrupt: delete its step-* folder, or train without --resume")
    with pytest.raises(UserError, match=rf"^model: {file} is not a readable safetensors file \({reason}\)") as err:
        load_model(ckpt)
    one_line(err)


# --- backbone directories ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> Path:
    """A small BERT as save_pretrained writes it: config, fast tokenizer, model.safetensors."""
    from transformers import BertConfig, BertModel

    from dsm5lab.models.backbone import build_wordpiece

    root = tmp_path_factory.mktemp("bert")
    tok = build_wordpiece(["I have not slept properly in weeks."], vocab_size=200)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=128)).save_pretrained(root)
    tok.save_pretrained(root)
    return root


def build(folder: Path):
    from dsm5lab.models.backbone import build_backbone

    raw = default_params()
    raw["model"] |= {"backbone": str(folder), "max_length": 64, "stride": 16}
    return build_backbone(validate(raw).model, [])


def test_pickle_only_backbone_weights_are_refused(backbone_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    folder = tmp_path / "bin-only"
    folder.mkdir()
    for f in backbone_dir.iterdir():
        if f.name != "model.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(backbone_dir / "model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(UserError) as err:
        build(folder)
    assert one_line(err) == (f"model.backbone: {folder / 'pytorch_model.bin'} is a pickle, which dsm5lab does not "
                             "load (unpickling can run code); convert it to model.safetensors "
                             "(safetensors.torch.save_file)")


def test_a_backbone_with_a_broken_safetensors_header_names_the_file(backbone_dir, tmp_path):
    assert build(backbone_dir).hidden_size == 16  # the intact directory loads
    folder = tmp_path / "broken"
    folder.mkdir()
    for f in backbone_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "model.safetensors").write_bytes(_truncated((backbone_dir / "model.safetensors").read_bytes()))
    with pytest.raises(UserError) as err:
        build(folder)
    assert one_line(err) == (f"model.backbone: {folder / 'model.safetensors'} is not a readable safetensors file "
                             "(incomplete metadata, file not fully covered); it is truncated or corrupt: download "
                             "or save the model again")
