"""The eval job's sample streams: a progress event per new token with the text so far and
the rate, a cancel between tokens, and the report's token count and tokens per second."""

from __future__ import annotations

from bitsmith.core.events import Emitter, read_events
from bitsmith.core.jobs import CancelToken, make_job
from bitsmith.core.rundir import RunDir
from bitsmith.core.runner import execute


def _job(model_dir, tokens: int):
    return make_job("eval", model={"source": str(model_dir)}, data="builtin-eval", seqlen=16, windows=1,
                    prompt="The quick brown fox", max_new_tokens=tokens)


def test_sample_streams_token_by_token(tmp_run, tiny_llama):
    run = RunDir.create(tmp_run, _job(tiny_llama, 6).to_dict())
    assert execute(run, Emitter()) == 0
    steps = [e for e in read_events(run.events_file) if e["type"] == "progress" and e["stage"] == "generate"]
    sample = run.read_report()["sample"]
    assert [e["done"] for e in steps] == list(range(1, sample["new_tokens"] + 1)) and sample["new_tokens"] >= 1
    assert all(e["total"] == 6 and e["tokens_per_s"] > 0 for e in steps)
    assert steps[-1]["text"] == sample["text"] and sample["tokens_per_s"] > 0


def test_cancel_stops_generation_between_tokens(tmp_run, tiny_llama):
    run = RunDir.create(tmp_run, _job(tiny_llama, 40).to_dict())
    token, seen = CancelToken(), []

    def cancel_at_third(event):
        if event["type"] == "progress" and event["stage"] == "generate":
            seen.append(event["done"])
            if event["done"] == 3:
                token.cancel()

    assert execute(run, Emitter([cancel_at_third]), cancel=token) == 3
    assert seen == [1, 2, 3]
