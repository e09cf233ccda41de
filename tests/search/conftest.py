"""Search fixtures: one small variant database of the tiny Llama, shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bitsmith.core.events import Emitter
from bitsmith.core.jobs import ModelSpec, make_job
from bitsmith.core.rundir import RunDir
from bitsmith.core.runner import execute

# settings every test search uses, so that they can share the database
# budget in code bits: the tests reason about code bits (test_serve.py checks effective budgets)
SMALL = dict(windows=4, seqlen=64, eval_windows=1, eval_seqlen=64, threads=1, batch_size=4, budget="code")
EVO_SETTINGS = dict(generations=4, offspring=4, survivors=[2, 1], tokens=[64, 128], fitness_seqlen=32,
           pool_windows=8, kl_topk=0, start_candidates=3, eval_every=2)


def run_search_job(path: Path, emitter: Emitter | None = None, cancel=None, resume: bool = False,
               **fields) -> tuple[int, RunDir, list[dict]]:
    """Run a search job in `path`; returns (exit code, run dir, events)."""
    events: list[dict] = []
    sinks = [events.append] + (emitter.sinks if emitter else [])
    job = make_job("search", **{**SMALL, **fields})
    run = RunDir.create(path, job.to_dict(), exist_ok=resume)
    code = execute(run, Emitter(sinks), cancel=cancel, resume=resume)
    return code, run, events


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine the tiny ops run several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def db_run(tiny_llama, tmp_path_factory) -> Path:
    """A sensitivity search at 3 bits, which builds the database (levels 2..6)."""
    path = tmp_path_factory.mktemp("search") / "sens"
    code, run, events = run_search_job(path, model=ModelSpec(str(tiny_llama)), method="sensitivity",
                                   target_bits=3.0)
    assert code == 0, [e for e in events if e["type"] == "error"]
    return run.path


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs for the module's tests (skipped without Ray); one a caller
    started is used and left running."""
    ray = pytest.importorskip("ray")
    from bitsmith.core.search.cluster import init_local_ray

    started = not ray.is_initialized()
    if started:
        init_local_ray(2)
    yield ray
    if started:
        ray.shutdown()


# Helpers as fixtures: tests import nothing from conftest (pytest runs in importlib mode,
# with the repository root off sys.path).
@pytest.fixture(scope="session")
def EVO() -> dict:
    """Small EvoPress settings shared by the search tests."""
    return dict(EVO_SETTINGS)


@pytest.fixture(scope="session")
def run_search():
    return run_search_job
