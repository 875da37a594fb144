"""A journal storage cut by a killed writer: a torn last record is moved aside and the study goes on; damage
in the middle stops with one line naming the byte offset. Real journal files, written by Optuna."""

from __future__ import annotations

import optuna
import pytest

from dsm5lab.config.hpo import StaleConfig
from dsm5lab.errors import UserError
from dsm5lab.hpo.storage import open_storage

STALE = StaleConfig(heartbeat_interval_s=60, grace_period_s=120, max_retry=0)


def objective(trial):
    return trial.suggest_float("x", 0, 1)


@pytest.fixture
def journal(tmp_path):
    path = tmp_path / "journal.log"
    study = optuna.create_study(study_name="s", storage=open_storage(f"journal:{path}", STALE))
    study.optimize(objective, n_trials=3)
    return path


def trials(path):
    return len(optuna.load_study(study_name="s", storage=open_storage(f"journal:{path}", STALE)).trials)


def test_a_torn_last_record_is_moved_aside_and_the_study_goes_on(journal, capsys):
    whole = journal.read_bytes()
    tail = b'{"op_code": 5, "worker_id": "ab'
    with journal.open("ab") as fh:  # a worker killed mid-append
        fh.write(tail)
    study = optuna.load_study(study_name="s", storage=open_storage(f"journal:{journal}", STALE))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: hpo: the last record of journal {journal} was cut off")
    assert journal.read_bytes() == whole
    [aside] = journal.parent.glob("journal.log.torn-*")
    assert aside.read_bytes() == tail and str(aside) in err
    assert len(study.trials) == 3
    study.optimize(objective, n_trials=1)  # appends after the repair: every later read works
    assert trials(journal) == 4


def test_damage_in_the_middle_stops_with_the_byte_offset_and_changes_nothing(journal):
    lines = journal.read_bytes().split(b"\n")
    broken = b"\n".join([lines[0], b'{"op_code": 5, "wor', *lines[1:]])
    journal.write_bytes(broken)
    offset = len(lines[0]) + 1
    with pytest.raises(UserError, match=rf"journal {journal} is damaged at byte {offset} \(a record that does not "):
        open_storage(f"journal:{journal}", STALE)
    assert journal.read_bytes() == broken and not list(journal.parent.glob("*.torn-*"))


def test_a_whole_journal_is_left_alone(journal, capsys):
    whole = journal.read_bytes()
    assert trials(journal) == 3 and journal.read_bytes() == whole and capsys.readouterr().err == ""


def test_a_record_appended_onto_a_torn_one_is_kept(tmp_path, capsys):
    """The next writer appends right after the torn bytes, on the same line: that record is real, and kept."""
    path = tmp_path / "journal.log"
    study = optuna.create_study(study_name="s", storage=open_storage(f"journal:{path}", STALE))
    study.optimize(objective, n_trials=2)
    lines = path.read_bytes().split(b"\n")[:-1]
    last = lines[-1] + b"\n"  # the last record (the second trial's end): torn, then written again after it
    path.write_bytes(b"\n".join(lines[:-1]) + b"\n" + last[:20] + last)
    capsys.readouterr()
    study = optuna.load_study(study_name="s", storage=open_storage(f"journal:{path}", STALE))
    assert "the record appended after it is kept" in capsys.readouterr().err
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert next(path.parent.glob("journal.log.torn-*")).read_bytes() == last[:20]
