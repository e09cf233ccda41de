"""Jobs: typed, validated, versioned JSON specs, and the registry of job kinds.

A job document is flat JSON:

    {"version": 1, "kind": "eval", "model": {"source": "default"}, "data": "builtin-eval", ...}

`kind` selects a registered `JobKind`, whose spec dataclass validates the rest (unknown
fields are an error, every field has a type and a default). Adding a kind is a new module
in `core/jobkinds/` that calls `register_job`; nothing central is edited.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Literal, TypeVar

from .config import from_dict, to_dict
from .errors import BadInput, Cancelled
from .events import Emitter
from .plugins import import_all

JOB_VERSION = 1

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class ModelSpec:
    """Which model to open and where to put it."""

    source: str = "default"          # default | HF folder | .gguf file | hub id | quantized checkpoint
    device: Device = "auto"          # auto: cuda when present, else cpu
    dtype: DType = "auto"            # auto: bfloat16 on cuda, float32 on cpu
    trust_remote_code: bool = False  # custom modelling code runs only when asked for
    # where the weights stay while a job walks the model block by block (core/offload.py):
    # auto: the job decides (CPU RAM in the stored dtype for quantize, search and eval);
    # ram: CPU RAM in the stored dtype; disk: the blocks stay in their safetensors files
    offload: Literal["auto", "ram", "disk"] = "auto"
    max_memory_gb: float | None = None   # RAM the job may use; one estimated to need more is refused


S = TypeVar("S")


class CancelToken:
    """Set by the worker's stdin reader (or a signal); checked between layers and steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()


@dataclass
class RunContext:
    """What a job handler gets besides its spec."""

    run_dir: "RunDir"
    emitter: Emitter
    cancel: CancelToken = field(default_factory=CancelToken)
    resume: bool = False


@dataclass(frozen=True)
class JobKind(Generic[S]):
    name: str
    spec_cls: type[S]
    run: Callable[[S, RunContext], dict]   # returns the report
    description: str = ""


_KINDS: dict[str, JobKind] = {}


def register_job(name: str, spec_cls: type, description: str = "") -> Callable:
    """Decorator for a handler `run(spec, ctx) -> report`."""

    def wrap(run: Callable) -> Callable:
        _KINDS[name] = JobKind(name, spec_cls, run, description)
        return run

    return wrap


def job_kinds() -> dict[str, JobKind]:
    """All registered kinds; imports every module of `core/jobkinds/` once."""
    from . import jobkinds

    import_all(jobkinds)
    return dict(_KINDS)


@dataclass
class Job(Generic[S]):
    kind: str
    spec: S

    def to_dict(self) -> dict:
        return {"version": JOB_VERSION, "kind": self.kind, **to_dict(self.spec)}


def parse_job(doc: Any) -> Job:
    """Validate a job document (already parsed JSON)."""
    if not isinstance(doc, dict):
        raise BadInput("the job file must hold a JSON object", 'start it with {"version": 1, "kind": ...}')
    version = doc.get("version")
    if version != JOB_VERSION:
        raise BadInput(f"job version {version!r} is not supported (this Bitsmith reads version {JOB_VERSION})",
                       f'set "version": {JOB_VERSION}')
    kinds = job_kinds()
    kind = doc.get("kind")
    if kind not in kinds:
        raise BadInput(f"unknown job kind {kind!r}", f"use one of: {', '.join(sorted(kinds))}")
    body = {k: v for k, v in doc.items() if k not in ("version", "kind")}
    return Job(kind, from_dict(kinds[kind].spec_cls, body, where=f"job({kind})"))


def load_job_file(path: str | Path) -> Job:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"job file {path} does not exist", "check the path")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BadInput(f"job file {path} is not valid JSON (line {err.lineno}: {err.msg})",
                       "fix the JSON syntax") from None
    except UnicodeDecodeError:
        raise BadInput(f"job file {path} is not a text file", "pass a JSON job file") from None
    return parse_job(doc)


def make_job(kind: str, **fields: Any) -> Job:
    """Build a job in code (CLI, window); runs the same validation as a file would."""
    spec_cls = job_kinds()[kind].spec_cls
    return parse_job({"version": JOB_VERSION, "kind": kind, **to_dict(spec_cls(**fields))})


def replace_spec(job: Job, **changes: Any) -> Job:
    return Job(job.kind, dataclasses.replace(job.spec, **changes))


# The run directory lives in its own module; re-exported here for convenience.
from .rundir import RunDir  # noqa: E402

__all__ = ["JOB_VERSION", "ModelSpec", "CancelToken", "RunContext", "JobKind", "register_job",
           "job_kinds", "Job", "parse_job", "load_job_file", "make_job", "replace_spec", "RunDir"]
