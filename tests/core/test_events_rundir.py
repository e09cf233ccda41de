import json
import os

import pytest

from bitsmith.core import atomic
from bitsmith.core.errors import BadInput
from bitsmith.core.events import Emitter, Progress, decode, encode, read_events
from bitsmith.core.rundir import RunDir


def test_event_lines_are_versioned_json():
    got = []
    em = Emitter([got.append])
    em.layer("model.layers.0.mlp.down_proj", bits=3, rel_error=float("nan"), seconds=0.1)
    line = encode(got[0])
    event = decode(line)
    assert event["v"] == 1 and event["type"] == "layer" and event["rel_error"] is None
    assert decode("not json") is None and decode('{"type": "layer"}') is None


def test_progress_eta():
    got = []
    p = Progress(Emitter([got.append]), "quantize", total=4)
    p.advance()
    p.advance()
    assert got[-1]["done"] == 2 and got[-1]["total"] == 4 and got[-1]["eta_s"] >= 0


def test_read_events_skips_a_half_written_line(tmp_path):
    path = tmp_path / "events.jsonl"
    good = encode({"v": 1, "t": 0, "type": "log", "message": "hi"})
    path.write_text(good + "\n" + good[:10])
    assert [e["message"] for e in read_events(path)] == ["hi"]


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic.write_json(tmp_path / "a.json", {"x": 1})
    atomic.write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]


def test_staged_dir_keeps_old_folder_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic.staged_dir(target) as tmp:
        (tmp / "f").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic.staged_dir(target) as tmp:
            (tmp / "f").write_text("two")
            raise RuntimeError("crash mid-write")
    assert (target / "f").read_text() == "one"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_rundir_refuses_a_different_job(tmp_path):
    RunDir.create(tmp_path / "r", {"version": 1, "kind": "eval"})
    with pytest.raises(BadInput, match="different job"):
        RunDir.create(tmp_path / "r", {"version": 1, "kind": "inspect"})
    with pytest.raises(BadInput, match="already holds this job"):
        RunDir.create(tmp_path / "r", {"version": 1, "kind": "eval"})
    assert RunDir.create(tmp_path / "r", {"version": 1, "kind": "eval"}, exist_ok=True)


def test_state_of_a_dead_worker_reads_interrupted(tmp_path):
    run = RunDir.create(tmp_path / "r", {"version": 1, "kind": "eval"})
    assert run.read_state()["state"] == "new"
    atomic.write_json(run.state_file, {"state": "running", "pid": 2**22 + 12345})
    assert run.read_state()["state"] == "interrupted"


def test_event_fields_are_declared(monkeypatch):
    """An undeclared field is a bug: the test suite (strict) raises; a user's run warns and goes on."""
    got = []
    em = Emitter([got.append])
    with pytest.raises(ValueError, match="undeclared 'spike'"):
        em.layer("model.layers.0.mlp.down_proj", spike=3.0)
    with pytest.raises(ValueError, match="lacks 'state'"):
        em.emit("stage", stage="quantize")
    monkeypatch.setenv("BITSMITH_STRICT_EVENTS", "0")
    em.layer("model.layers.0.mlp.down_proj", spike=3.0)
    assert got and got[-1]["spike"] == 3.0


def test_the_window_reads_declared_event_fields_only():
    import re
    from pathlib import Path

    import bitsmith.app
    from bitsmith.core.events import EVENTS

    declared = {"v", "t", "type"} | {f for t in EVENTS.values() for f in t.fields + t.optional}
    read = set()
    for file in Path(bitsmith.app.__file__).parent.glob("*.py"):
        read |= set(re.findall(r"""\bevent(?:\.get\(|\[)\s*["']([a-z_]+)["']""", file.read_text(encoding="utf-8")))
    assert {"rel_error", "spike_score", "message"} <= read
    assert read <= declared, f"the window reads undeclared event fields: {sorted(read - declared)}"
