"""The export entry points: warnings from a plan alone, shards, atomic writes, the model card,
the native copy, the `export` job kind and `bitsmith export`."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from bitsmith.core.errors import BadInput
from bitsmith.core.export import export_checkpoint, export_warnings
from bitsmith.core.files import QUANT_MANIFEST


def _plan(rules, group_size=64):
    from bitsmith.core.inventory import LayerInfo
    from bitsmith.core.plan import PlanSpec, Rule, resolve_plan

    layers = []
    for b in range(2):
        for role, (d_out, d_in) in {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576),
                                    "o_proj": (576, 576), "gate_proj": (1536, 576), "up_proj": (1536, 576),
                                    "down_proj": (576, 1536)}.items():
            part = "self_attn" if role[0] in "qkvo" else "mlp"
            layers.append(LayerInfo(f"model.layers.{b}.{part}.{role}", b, role, d_out, d_in, False))
    return resolve_plan(PlanSpec(rules=[Rule(**r) for r in rules], bits=4, group_size=group_size), layers)


def test_warnings_come_from_the_plan_alone():
    plan = _plan([dict(pattern=r"layers\.1\.mlp\.down_proj", keep="16"), dict(pattern="k_proj", bits=3),
                  dict(pattern="gate_proj", bits=2, sym=True), dict(pattern="up_proj", bits=2, sym=True)],
                 group_size=128)
    gguf = export_warnings(plan, "gguf")
    assert any("2/3 bits are stored losslessly" in w for w in gguf)
    assert not any("not a multiple of 32" in w for w in gguf)          # 576 -> g96, 1536 -> g128
    ct = export_warnings(plan, "compressed-tensors")
    assert any("one more bit" in w for w in ct) and any("stored at [2, 5] bits" in w for w in ct)
    assert any(w.startswith("2 blocks") and "(qkv)" in w for w in ct) and not any("(gate/up)" in w for w in ct)
    gptq = export_warnings(plan, "gptq", act_order=True)
    assert any("[96]" in w for w in gptq) and any("act-order" in w for w in gptq)
    assert any("dynamic" in w for w in gptq)
    assert export_warnings(plan, "native") == []
    doc = {"layers": {n: vars(e) for n, e in plan.entries.items()}}      # a manifest's per-layer entries
    assert export_warnings(doc, "gguf") == gguf
    assert any("Llama-architecture" in w for w in export_warnings(plan, "gguf", arch="gpt2"))
    kq = export_warnings(_plan([dict(pattern="q_proj", bits=2)], group_size=16), "gguf", lowbit="kquant")
    assert any("K-quants" in w for w in kq) and any("not a multiple of 32" in w for w in kq)


def test_warnings_from_a_checkpoint_manifest(mixed_checkpoint):
    manifest = json.loads((mixed_checkpoint / QUANT_MANIFEST).read_text())
    gguf = export_warnings(manifest, "gguf")
    assert any("fp8" in w for w in gguf) and any("2/3 bits" in w for w in gguf)
    assert not any("act-order" in w for w in export_warnings(manifest, "gptq"))
    manifest["provenance"]["job"] = {"method": "rtn", "act_order": True}     # RTN ignores act-order
    assert not any("act-order" in w for w in export_warnings(manifest, "gptq"))
    manifest["provenance"]["job"] = {"method": "gptq", "act_order": True}
    assert any("act-order" in w for w in export_warnings(manifest, "gptq"))
    manifest["base_model"]["model_type"] = "gpt2"
    assert any("Llama-architecture" in w for w in export_warnings(manifest, "gguf"))


def test_large_exports_are_sharded_with_an_index(mixed_checkpoint, tmp_path):
    report = export_checkpoint(mixed_checkpoint, "gptq", tmp_path / "g", {"max_shard_bytes": 60_000})
    folder = tmp_path / "g"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted({f for f in index["weight_map"].values()})
    assert len(shards) > 2 and all(f in report["files"] for f in shards)
    total = 0
    for shard in shards:
        with safe_open(folder / shard, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():
                assert index["weight_map"][key] == shard
                t = f.get_tensor(key)
                total += t.numel() * t.element_size()
    assert total == index["metadata"]["total_size"]


def test_a_failed_export_leaves_the_old_folder(mixed_checkpoint, tmp_path, monkeypatch):
    from bitsmith.core.export import gptq

    out = tmp_path / "out"
    export_checkpoint(mixed_checkpoint, "gptq", out)
    before = sorted(p.name for p in out.iterdir())

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gptq, "gptq_layer_tensors", broken)
    with pytest.raises(RuntimeError):
        export_checkpoint(mixed_checkpoint, "gptq", out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]            # no staged leftovers


def test_model_card_and_native_copy(mixed_checkpoint, tmp_path):
    from bitsmith.core.model import load_model

    report = export_checkpoint(mixed_checkpoint, "native", tmp_path / "n")
    folder = tmp_path / "n"
    card = (folder / "README.md").read_text()
    assert "123.4" in card and "Average bits per weight" in card and "kept (fp8)" in card
    assert f"{report['avg_code_bits']:.3f}" in card
    assert (folder / "report.json").is_file() and (folder / "provenance.json").is_file()
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["job"] == {"version": 1, "kind": "quantize"}
    loaded = load_model(str(folder))
    assert loaded.quantized is not None


def test_bad_input(mixed_checkpoint, tmp_path):
    with pytest.raises(BadInput, match="not a Bitsmith quantized checkpoint"):
        export_checkpoint(tmp_path, "gptq", tmp_path / "x")
    with pytest.raises(BadInput, match="unknown export format"):
        export_checkpoint(mixed_checkpoint, "onnx", tmp_path / "x")
    with pytest.raises(BadInput, match="inside the checkpoint"):
        export_checkpoint(mixed_checkpoint, "gptq", mixed_checkpoint / "export")


def test_cli_and_job_kind(mixed_checkpoint, tmp_path, capsys):
    from bitsmith.core.cli import main
    from bitsmith.core.jobs import make_job

    out = tmp_path / "cli-gguf"
    code = main(["export", str(mixed_checkpoint.parent), "--format", "gguf", "--out", str(out), "--json",
                 "--run", str(tmp_path / "run")])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "export" and report["format"] == "gguf" and (out / report["gguf_file"]).is_file()
    assert json.loads((tmp_path / "run" / "report.json").read_text())["out"] == str(out)
    code = main(["export", str(mixed_checkpoint), "--format", "compressed-tensors", "--ct-layout", "asym",
                 "--out", str(tmp_path / "cli-ct"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ct_layout"] == "asym" and report["widened_layers"] == {}
    assert any(r["reader"] == "transformers" and r["verdict"] == "refuses" for r in report["readers"])
    code = main(["export", str(mixed_checkpoint), "--format", "gguf", "--embed-bits", "16", "--out", str(tmp_path / "g16")])
    assert code == 0 and "weight files" in capsys.readouterr().out
    record = json.loads((tmp_path / "g16" / "bitsmith-export.json").read_text())
    assert record["options"]["embed_bits"] == 16 and record["source_checkpoint"] == str(mixed_checkpoint)
    with pytest.raises(BadInput, match="--embed-bits 4"):
        export_checkpoint(mixed_checkpoint, "gguf", tmp_path / "z", {"embed_bits": 4})
    assert main(["export", str(tmp_path / "missing"), "--format", "gptq", "--out", str(tmp_path / "y")]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(BadInput, match="no source"):
        make_job("export", format="gptq")
    import argparse

    from bitsmith.core.cli import run_job_inline

    job = make_job("export", source=str(mixed_checkpoint), format="compressed-tensors")
    assert job.to_dict()["out"] is None                    # default: RUN_DIR/export/FORMAT
    code, report = run_job_inline(job, argparse.Namespace(out=str(tmp_path / "run2"), events=False, resume=False))
    assert code == 0 and report["out"] == str(tmp_path / "run2" / "export" / "compressed-tensors")
    assert (tmp_path / "run2" / "export" / "compressed-tensors" / "config.json").is_file()
