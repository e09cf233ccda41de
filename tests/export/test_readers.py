"""What each export's README says about its readers, checked against the readers themselves:
`bitsmith verify --all` runs every call the README names, including the ones it says refuse or
misread the file, and each must do what the README says (perplexity within 0.5% of ours for
"loads", an error for "refuses", a wrong perplexity without an error for "misreads")."""

from __future__ import annotations

import json

import pytest

from bitsmith.core.export import export_checkpoint

pytest.importorskip("compressed_tensors")

# 2/3/4/8 bits, asymmetric and symmetric, a kept layer
MIXED = [dict(pattern=r"layers\.1\.self_attn\.v_proj$", keep="16"), dict(pattern="q_proj", bits=4, sym=True),
         dict(pattern="k_proj", bits=3), dict(pattern="gate_proj", bits=2), dict(pattern="up_proj", bits=8),
         dict(pattern=".", bits=4)]
MIXED_SYM = [dict(pattern="q_proj", bits=2, sym=True), dict(pattern="k_proj", bits=3, sym=True),
             dict(pattern="mlp", bits=8, sym=True), dict(pattern=".", bits=4, sym=True)]
MIXED_ASYM = [dict(pattern="q_proj", bits=2), dict(pattern="k_proj", bits=3), dict(pattern="mlp", bits=8),
              dict(pattern=".", bits=4)]
UNIFORM = [dict(pattern=".", bits=4)]


@pytest.fixture(scope="module")
def checkpoints(save_checkpoint, tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    return {"mixed": save_checkpoint(root / "mixed", tiny_llama, MIXED),
            "mixed_sym": save_checkpoint(root / "mixed_sym", tiny_llama, MIXED_SYM),
            "mixed_asym": save_checkpoint(root / "mixed_asym", tiny_llama, MIXED_ASYM),
            "uniform": save_checkpoint(root / "uniform", tiny_llama, UNIFORM)}


def _verify(export_dir):
    from bitsmith.core.export.verify import verify_export

    return verify_export(export_dir, data="builtin-eval", seqlen=64, windows=4, run_all=True)


def _by_call(report):
    return {(r["reader"], r["call"].split("(", 1)[-1]): r for r in report["readers"]}


@pytest.mark.parametrize("plan,layout,plain,dequantize", [
    ("mixed", "sym", "loads", "refuses"),          # int-quantized 8-bit beside packed groups
    ("mixed", "asym", "refuses", "refuses"),       # asymmetric and symmetric groups
    ("mixed_sym", "sym", "loads", "misreads"),     # every group symmetric packed: silently wrong
    ("mixed_asym", "asym", "refuses", "misreads"),  # every group asymmetric packed: silently wrong
    ("uniform", "asym", "refuses", "loads"),
    ("uniform", "sym", "loads", "loads"),
])
def test_transformers_does_what_the_readme_says(checkpoints, tmp_path, plan, layout, plain, dequantize):
    out = tmp_path / "ct"
    report = export_checkpoint(checkpoints[plan], "compressed-tensors", out, {"ct_layout": layout})
    hf = [r for r in report["readers"] if r["reader"] == "transformers"]
    assert [r["verdict"] for r in hf] == [plain, dequantize]
    card = (out / "README.md").read_text()
    assert f"| transformers | **{plain}** | `AutoModelForCausalLM.from_pretrained(\"{out}\")`" in card
    assert json.loads((out / "bitsmith-export.json").read_text())["readers"] == report["readers"]
    if "refuses" in (plain, dequantize) or "misreads" in (plain, dequantize):
        assert any(w.startswith("transformers ") for w in report["warnings"])   # said before writing

    verified = _verify(out)
    results = {r["call"]: r for r in verified["readers"]}
    for r in verified["readers"]:
        if r["status"] in ("ran", "failed"):
            assert r["agrees"] is not False, r
    plain_run = results[f'AutoModelForCausalLM.from_pretrained("{out}")']
    dequant_run = next(r for c, r in results.items() if "dequantize=True" in c)
    library = next(r for r in verified["readers"] if r["reader"] == "compressed-tensors")
    assert library["status"] == "ran" and library["rel_diff"] <= 0.005 and library["logit_diff"] < 1e-2
    for run, verdict in ((plain_run, plain), (dequant_run, dequantize)):
        if verdict == "loads":      # perplexity within 0.5%, and the logits (which a random model's
            assert run["status"] == "ran" and run["rel_diff"] <= 0.005 and run["logit_diff"] < 1e-2
        elif verdict == "refuses":
            assert run["status"] == "failed" and run["ppl"] is None
        else:                       # no error, wrong numbers
            assert run["status"] == "ran" and run["logit_diff"] > 0.05
    assert verified["pass"]


def test_verify_without_all_runs_only_what_loads(checkpoints, tmp_path, capsys):
    from bitsmith.core.cli import main

    out = tmp_path / "ct"
    export_checkpoint(checkpoints["mixed"], "compressed-tensors", out, {"ct_layout": "asym"})
    code = main(["verify", str(out), "--seqlen", "64", "--windows", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["pass"]
    status = {(r["reader"], r["verdict"]): r["status"] for r in report["readers"]}
    assert status[("transformers", "refuses")] == "not run"
    assert status[("compressed-tensors", "loads")] == "ran"
    assert main(["verify", str(tmp_path / "nothing")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_gptq_readers_are_named_and_reported_missing(checkpoints, tmp_path):
    """GPTQModel does not install here (it needs torch >= 2.14.1): verify says so, with the
    command, instead of a number; the README names GPTQModel for mixed files, not transformers."""
    import importlib.util

    out = tmp_path / "gptq"
    report = export_checkpoint(checkpoints["mixed"], "gptq", out)
    verdicts = {r["reader"]: r["verdict"] for r in report["readers"]}
    assert verdicts == {"GPTQModel": "loads", "transformers": "refuses", "vLLM / SGLang": "not tried"}
    assert any(w.startswith("transformers refuses") and "GPTQModel.load" in w for w in report["warnings"])
    uniform = export_checkpoint(checkpoints["uniform"], "gptq", tmp_path / "gptq-u")
    assert {r["reader"]: r["verdict"] for r in uniform["readers"]}["transformers"] == "loads"
    if importlib.util.find_spec("gptqmodel") is None:
        verified = _verify(out)
        gptqmodel = next(r for r in verified["readers"] if r["reader"] == "GPTQModel")
        assert gptqmodel["status"] == "not installed" and "pip install gptqmodel" in gptqmodel["detail"]
        assert not verified["pass"]               # nothing ran: verify does not claim success


def test_llama_cpp_reads_the_gguf_export(checkpoints, tmp_path):
    """llama-perplexity (when on PATH) on the text as Python reads it, beside Bitsmith's model
    scored by llama.cpp's protocol (second half of each chunk)."""
    import shutil

    if shutil.which("llama-perplexity") is None:
        pytest.skip("llama-perplexity is not on PATH (build llama.cpp to run this)")
    from bitsmith.core.export.verify import verify_export

    out = tmp_path / "gguf"
    export_checkpoint(checkpoints["mixed_sym"], "gguf", out)
    report = verify_export(out, data="builtin-eval", seqlen=128, windows=4)
    llama = next(r for r in report["readers"] if r["reader"] == "llama.cpp")
    assert llama["status"] == "ran" and llama["protocol"] == "llama.cpp halves"
    assert llama["rel_diff"] <= 0.005 and llama["agrees"]


def test_halves_protocol_scores_the_second_half_of_each_chunk():
    """What llama-perplexity computes: logits at positions c/2 .. c-2 predict tokens c/2+1 .. c-1."""
    import math

    import torch

    from bitsmith.core.export.verify import halves_perplexity

    class Table(torch.nn.Module):          # logits depend on the input token only
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))

        def forward(self, input_ids, use_cache=False):
            return type("Out", (), {"logits": self.w[input_ids]})()

    model = Table()
    chunks = torch.randint(0, 8, (3, 10), generator=torch.Generator().manual_seed(1))
    logp = torch.log_softmax(model.w, dim=-1)
    nll = [-logp[c[i], c[i + 1]].item() for c in chunks for i in range(5, 9)]
    assert halves_perplexity(model, chunks) == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-6)
