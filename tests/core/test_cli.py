"""The `bitsmith` command: inspect, eval, run — and one clear line for every bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bitsmith.core.client import module_command
from bitsmith.core.files import WIKITEXT_TEST



def bitsmith(*args, cwd=None, timeout=300):
    return subprocess.run(module_command("bitsmith.core.cli", *map(str, args)),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_inspect_json(tiny_models):
    proc = bitsmith("inspect", tiny_models["qwen2"], "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["layers"] == 14
    assert report["layers"][0]["shape"] == [64, 64]


def test_eval_json_and_run_dir(tiny_llama, tmp_path):
    proc = bitsmith("eval", tiny_llama, "--data", "builtin-eval", "--seqlen", 32, "--windows", 2,
                    "--json", "--out", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["windows"] == 2
    assert (tmp_path / "r" / "report.json").is_file() and (tmp_path / "r" / "events.jsonl").is_file()


def test_run_job_file_through_the_worker(tiny_llama, tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"version": 1, "kind": "eval", "model": {"source": str(tiny_llama)},
                               "data": "builtin-eval", "seqlen": 32, "windows": 2}))
    proc = bitsmith("run", job, "--out", tmp_path / "r", "--events")
    assert proc.returncode == 0, proc.stderr
    kinds = [json.loads(line)["type"] for line in proc.stdout.splitlines()]
    assert kinds[0] == "stage" and kinds[-1] == "result" and "progress" in kinds


def _bad_inputs(tmp_path: Path, tiny_llama: Path) -> dict[str, tuple[list, str]]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("just some text")
    (tmp_path / "empty.txt").write_text("")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for f in tiny_llama.iterdir():
        (truncated / f.name).write_bytes(f.read_bytes())
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (tmp_path / "job.json").write_text('{"version": 1, "kind": "eval", ')
    model = str(tiny_llama)
    return {
        "missing path": (["eval", tmp_path / "nope"], "does not exist"),
        "not a model folder": (["eval", tmp_path / "empty"], "not a model folder"),
        "truncated safetensors": (["eval", truncated], "truncated"),
        "text file as model": (["eval", tmp_path / "notes.txt"], "not a .gguf model"),
        "empty data": (["eval", model, "--data", f"file:{tmp_path / 'empty.txt'}"], "has 0 tokens"),
        "too-short data": (["eval", model, "--data", f"file:{tmp_path / 'notes.txt'}"], "fewer than"),
        "malformed job": (["run", tmp_path / "job.json"], "not valid JSON"),
    }


@pytest.mark.parametrize("case", ["missing path", "not a model folder", "truncated safetensors",
                                  "text file as model", "empty data", "too-short data", "malformed job"])
def test_bad_input_is_one_line_without_traceback(case, tmp_path, tiny_llama):
    args, fragment = _bad_inputs(tmp_path, tiny_llama)[case]
    proc = bitsmith(*args, cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_default_model_reference_perplexity():
    """The foundation's reference figure: dense SmolLM2-135M, WikiText-2 test, 16 x 512."""
    proc = bitsmith("eval", "default", "--data", f"file:{WIKITEXT_TEST}", "--seqlen", 512,
                    "--windows", 16, "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert abs(json.loads(proc.stdout)["ppl"] - 36.08) <= 0.05
