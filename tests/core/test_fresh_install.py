"""Nothing the project starts puts the repository root on sys.path.

transformers 5.25 requires Hugging Face's `kernels` package and imports it whenever a model
loads. Our top-level `kernels/` folder (installed as `bitsmith.kernels`) shadows it in any
process that has the repository root on sys.path: `python -m ...` started from there does.
The worker, the window and the tests start with `python -P`, which keeps it off.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from bitsmith.core.client import python_command, worker_command
from bitsmith.core.jobs import make_job
from bitsmith.core.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
OUR_KERNELS = str(REPO / "kernels" / "__init__.py")


def _where_kernels_resolves(command: list[str]) -> str:
    code = "import importlib.util as u; s = u.find_spec('kernels'); print(s.origin if s else 'none')"
    out = subprocess.run([*command, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_hazard_is_real_from_the_repository_root():
    """Control: a plain `python -c` from the repository root finds our folder as `kernels`."""
    assert (REPO / "kernels" / "__init__.py").is_file()
    assert _where_kernels_resolves([sys.executable]) == OUR_KERNELS


def test_our_subprocesses_do_not_see_the_repository_folder():
    origin = _where_kernels_resolves(python_command())
    assert origin != OUR_KERNELS


def test_transformers_modeling_utils_imports_from_the_repository_root():
    out = subprocess.run(python_command("-c", "import transformers.modeling_utils"), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_hf_kernels_package_is_the_installed_one():
    """Where transformers needs `kernels` (5.25+), the test process sees the installed package."""
    spec = importlib.util.find_spec("kernels")
    if spec is not None:
        assert spec.origin != OUR_KERNELS


def test_worker_started_from_the_repository_root_loads_a_model(tiny_llama, tmp_path):
    run = RunDir.create(tmp_path / "run", make_job("inspect", model={"source": str(tiny_llama)}).to_dict())
    out = subprocess.run(worker_command(run.path), cwd=REPO, capture_output=True, text=True, timeout=300)
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 0, (events[-2:], out.stderr[-3000:])
    assert events[-1]["type"] == "result" and events[-1]["report"]["summary"]["layers"] == 14
