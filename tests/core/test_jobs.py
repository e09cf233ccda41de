import json

import pytest

from bitsmith.core.errors import BadInput
from bitsmith.core.jobs import job_kinds, load_job_file, make_job, parse_job


def test_kinds_are_registered_by_module():
    kinds = job_kinds()
    assert {"inspect", "eval"} <= set(kinds)


def test_job_round_trip():
    job = make_job("eval", data="builtin", seqlen=64, windows=2)
    again = parse_job(json.loads(json.dumps(job.to_dict())))
    assert again.spec == job.spec and again.to_dict()["version"] == 1


@pytest.mark.parametrize("doc, fragment", [
    ([], "JSON object"),
    ({"kind": "eval"}, "job version None"),
    ({"version": 1, "kind": "nope"}, "unknown job kind 'nope'"),
    ({"version": 1, "kind": "eval", "colour": "red"}, "unknown field(s) colour"),
    ({"version": 1, "kind": "eval", "seqlen": 1}, "seqlen 1 is too short"),
    ({"version": 1, "kind": "eval", "model": {"device": "tpu"}}, "job(eval).model.device must be one of"),
])
def test_bad_job_documents(doc, fragment):
    with pytest.raises(BadInput) as err:
        parse_job(doc)
    assert fragment in err.value.message and err.value.hint


def test_malformed_job_file(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{"version": 1, "kind": ')
    with pytest.raises(BadInput, match="not valid JSON"):
        load_job_file(path)
    with pytest.raises(BadInput, match="does not exist"):
        load_job_file(tmp_path / "missing.json")
