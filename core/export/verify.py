"""`bitsmith verify EXPORT`: load an export with every reader installed and print each one's
perplexity beside Bitsmith's own model (the checkpoint the export was written from).

The readers and their exact calls come from `registry.reader_verdicts` (the table the export's
README prints). A reader runs when its Python modules import (transformers, compressed-tensors,
GPTQModel, gguf) or, for llama.cpp, when `llama-perplexity` is on PATH; otherwise it is
reported as "not installed" with the install command. By default only the calls the README
says load the file run; `--all` also runs the ones it says refuse or misread, to show it.

Two protocols, each compared like for like:
- torch readers: Bitsmith's windows (`data.eval_windows`: consecutive windows of `seqlen`
  tokens, every next token scored);
- llama-perplexity: its own (chunks of `seqlen` tokens, BOS in the first position when the
  vocabulary asks for one, only the second half of each chunk scored), so Bitsmith's model is
  scored the same way on the same tokens. llama.cpp reads the text file's raw bytes, and the
  shared WikiText file has CRLF line ends: the text is written to a temporary file as Python
  reads it (universal newlines), the same text Bitsmith tokenizes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import BadInput
from . import readers as R

TOLERANCE = 0.005                  # a reader "loads" the export when within 0.5% of Bitsmith
MISREAD_LOGITS = 0.05              # or misreads it when the logits move this much (tiny random models'
                                   # perplexity hardly depends on their weights; their logits do)
LLAMA_PERPLEXITY = "llama-perplexity"
INSTALL = {"compressed_tensors": 'pip install "compressed-tensors==0.20.1"',
           "gptqmodel": "pip install gptqmodel optimum  (GPTQModel 7.7 needs torch >= 2.14.1)",
           "optimum": "pip install optimum", "gguf": "pip install gguf",
           LLAMA_PERPLEXITY: "build llama.cpp (cmake -B build && cmake --build build --target llama-perplexity) "
                             "and put build/bin on PATH, or pass --llama-perplexity PATH"}


@dataclass
class ReaderResult:
    reader: str
    call: str
    verdict: str                   # what the README says
    status: str                    # "ran" | "failed" | "not installed" | "not run" (no runner / not asked)
    ppl: float | None = None
    ours_ppl: float | None = None  # Bitsmith's model under the same protocol
    rel_diff: float | None = None
    logit_diff: float | None = None  # max |logits - ours| / max |ours| on the first window
    agrees: bool | None = None     # the run matched the verdict
    protocol: str = "windows"
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Inputs:
    """What every reader is compared on."""
    folder: Path
    record: dict
    text: str                      # the evaluation text as Python reads it
    seqlen: int
    windows: int
    ours: Any = None               # Bitsmith's LoadedModel (None when the checkpoint is missing)
    cache: dict = field(default_factory=dict)


# --- perplexity under the two protocols -------------------------------------------------------

def _tokens(inputs: Inputs) -> torch.Tensor:
    if "tokens" not in inputs.cache:
        from ..data import tokenize_text

        inputs.cache["tokens"] = tokenize_text(inputs.text, inputs.ours.tokenizer)
    return inputs.cache["tokens"]


def _windows(inputs: Inputs) -> torch.Tensor:
    """[n, seqlen] as data.eval_windows cuts them."""
    tokens = _tokens(inputs)
    n = min(tokens.numel() // inputs.seqlen, inputs.windows)
    if n < 1:
        raise BadInput(f"the text has {tokens.numel()} tokens, fewer than one window of {inputs.seqlen}",
                       "use a longer --data text or a shorter --seqlen")
    return tokens[: n * inputs.seqlen].view(n, inputs.seqlen)


@torch.no_grad()
def halves_perplexity(model: torch.nn.Module, chunks: torch.Tensor) -> float:
    """llama-perplexity's protocol on [n, c] chunks: score tokens c/2 + 1 .. c - 1 of each
    chunk from logits at positions c/2 .. c - 2 (c - c/2 - 1 predictions per chunk)."""
    first = chunks.shape[1] // 2
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for chunk in chunks:
        ids = chunk[None].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[0, first:-1].float()
        total += F.cross_entropy(logits, ids[0, first + 1:], reduction="sum").item()
        count += logits.shape[0]
    return math.exp(total / count)


def _ours(inputs: Inputs, protocol: str, chunks: torch.Tensor | None = None) -> float:
    key = ("ours", protocol)
    if key not in inputs.cache:
        from ..evaluate import perplexity

        model = inputs.ours.model
        inputs.cache[key] = perplexity(model, _windows(inputs)) if protocol == "windows" else \
            halves_perplexity(model, chunks)
    return inputs.cache[key]


# --- the readers ---------------------------------------------------------------------------

def _hf(inputs: Inputs) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(inputs.folder), dtype=torch.float32).eval()


def _hf_dequantize(inputs: Inputs) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    return AutoModelForCausalLM.from_pretrained(str(inputs.folder), dtype=torch.float32,
                                                quantization_config=CompressedTensorsConfig(dequantize=True)).eval()


def _hf_gguf(inputs: Inputs) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(inputs.folder), gguf_file=inputs.record["gguf_file"],
                                                dtype=torch.float32).eval()


def _gptqmodel(inputs: Inputs) -> torch.nn.Module:
    from gptqmodel import GPTQModel

    loaded = GPTQModel.load(str(inputs.folder))
    return getattr(loaded, "model", loaded).eval()


def _native(inputs: Inputs) -> torch.nn.Module:
    from ..model import load_model

    return load_model(str(inputs.folder)).model


def _model_from_config(folder: Path) -> torch.nn.Module:
    """The export's architecture with random weights, in float32 (for layer-by-layer readers)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    doc = json.loads((folder / "config.json").read_text())
    doc.pop("quantization_config", None)
    config = AutoConfig.for_model(**{k: v for k, v in doc.items() if k != "model_type"}, model_type=doc["model_type"])
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _load_dense(model: torch.nn.Module, tensors: dict, weights: dict) -> None:
    state = {k: v.float() for k, v in tensors.items() if k in model.state_dict()}
    state.update({f"{n}.weight": w for n, w in weights.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"reader left {missing[:3]} missing, {unexpected[:3]} unexpected")
    if model.config.tie_word_embeddings:
        model.tie_weights()


def _load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def read_compressed(folder: Path) -> torch.nn.Module:
    """The compressed-tensors library's own decompression, layer by layer, into the model
    built from the export's config.json (each config group's registered compressor)."""
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    doc = json.loads((folder / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(doc)
    tensors = _load_safetensors(folder)
    weights = {}
    for scheme in config.config_groups.values():
        compressor = BaseCompressor.get_value_from_registry(scheme.format or config.format)
        for name in scheme.targets:
            local = {k[len(name) + 1:]: v for k, v in tensors.items()
                     if k.startswith(name + ".") and "." not in k[len(name) + 1:]}
            weights[name] = compressor.decompress(local, scheme)["weight"].float()
    model = _model_from_config(folder)
    dense = {k: v for k, v in tensors.items() if k.endswith((".weight", ".bias")) and k.rsplit(".", 1)[0] not in weights}
    _load_dense(model, dense, weights)
    return model


def _ct_library(inputs: Inputs) -> torch.nn.Module:
    return read_compressed(inputs.folder)


TORCH_RUNNERS: dict[str, Callable[[Inputs], torch.nn.Module]] = {
    R.CALL_HF_DEQUANT: _hf_dequantize, R.CALL_HF_GGUF: _hf_gguf, R.CALL_GPTQMODEL: _gptqmodel,
    R.CALL_CT_LIBRARY: _ct_library, R.CALL_NATIVE: _native, R.CALL_HF: _hf}


def torch_runner(call: str) -> Callable[[Inputs], torch.nn.Module] | None:
    """The loader for a reader call: one of the above, or one a format registered (ExportFormat.runners)."""
    from .registry import export_formats

    if call in TORCH_RUNNERS:
        return TORCH_RUNNERS[call]
    return next((f.runners[call] for f in export_formats().values() if call in f.runners), None)


# --- llama.cpp -------------------------------------------------------------------------------

def _gguf_bos(path: Path) -> int | None:
    """The BOS id llama.cpp puts first in every chunk, or None when the vocabulary adds none."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def value(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.parts[f.data[0]][0]
    add = value("tokenizer.ggml.add_bos_token")
    bos = value("tokenizer.ggml.bos_token_id")
    return int(bos) if add and bos is not None else None


def llama_chunks(inputs: Inputs, bos: int | None) -> torch.Tensor:
    """The chunks llama-perplexity scores: the text's tokens (BOS first when the vocabulary adds
    one), cut into [n, seqlen], BOS replacing the first token of every chunk."""
    tokens = _tokens(inputs)
    if bos is not None:
        tokens = torch.cat([torch.tensor([bos]), tokens])
    n = min(tokens.numel() // inputs.seqlen, inputs.windows)
    chunks = tokens[: n * inputs.seqlen].view(n, inputs.seqlen).clone()
    if bos is not None:
        chunks[:, 0] = bos
    return chunks


FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+)")


def run_llama_perplexity(exe: str, gguf_path: Path, text: str, seqlen: int, chunks: int) -> float:
    """llama-perplexity on `text` written as Python reads it (LF line ends, UTF-8)."""
    with tempfile.TemporaryDirectory(prefix="bitsmith-verify-") as tmp:
        text_file = Path(tmp) / "text.txt"
        text_file.write_bytes(text.encode("utf-8"))
        # --no-repack: verification wants the numbers, not speed, and the repacked AMX kernels
        # crashed (SIGSEGV in ggml_backend_amx_mul_mat) on this project's machines
        cmd = [exe, "-m", str(gguf_path), "-f", str(text_file), "-c", str(seqlen), "-b", str(seqlen),
               "--chunks", str(chunks), "-t", str(os.cpu_count() or 1), "--no-repack"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    found = FINAL.search(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"llama-perplexity exited {proc.returncode}: {' | '.join(tail)}")
    return float(found.group(1))


# --- one reader -------------------------------------------------------------------------------

def _missing(verdict: R.ReaderVerdict) -> list[str]:
    return [m for m in verdict.needs if importlib.util.find_spec(m) is None]


def _judge(result: ReaderResult) -> ReaderResult:
    """Did the run do what the README says? loads: perplexity within TOLERANCE; misreads: no
    error, and perplexity or logits off; refuses: it should not have loaded at all."""
    if result.ppl is not None and result.ours_ppl is not None:
        result.rel_diff = abs(result.ppl - result.ours_ppl) / result.ours_ppl
        close = result.rel_diff <= TOLERANCE
        moved = not close or (result.logit_diff is not None and result.logit_diff > MISREAD_LOGITS)
        result.agrees = {R.LOADS: close, R.MISREADS: moved, R.REFUSES: False}.get(result.verdict)
    return result


@torch.no_grad()
def _logit_diff(model: torch.nn.Module, inputs: Inputs) -> float:
    window = _windows(inputs)[:1]
    if "ours_logits" not in inputs.cache:
        inputs.cache["ours_logits"] = inputs.ours.model(input_ids=window, use_cache=False).logits.float()
    ours = inputs.cache["ours_logits"]
    got = model(input_ids=window.to(next(model.parameters()).device), use_cache=False).logits.float().cpu()
    return float((got - ours).abs().max() / ours.abs().max().clamp_min(1e-30))


def _run_torch(verdict: R.ReaderVerdict, inputs: Inputs, result: ReaderResult) -> ReaderResult:
    runner = torch_runner(verdict.call)
    try:
        model = runner(inputs)
    except Exception as err:         # a reader refusing the file is a result, not a crash
        result.status, result.detail = "failed", f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
        result.agrees = verdict.verdict == R.REFUSES
        return result
    from ..evaluate import perplexity

    result.status, result.ppl = "ran", perplexity(model, _windows(inputs))
    if inputs.ours is not None:
        result.ours_ppl, result.logit_diff = _ours(inputs, "windows"), _logit_diff(model, inputs)
    return _judge(result)


def _run_llama(inputs: Inputs, result: ReaderResult, exe: str) -> ReaderResult:
    gguf_path = inputs.folder / inputs.record["gguf_file"]
    chunks = llama_chunks(inputs, _gguf_bos(gguf_path)) if inputs.ours is not None else None
    n = chunks.shape[0] if chunks is not None else inputs.windows
    result.protocol = "llama.cpp halves"
    try:
        result.ppl = run_llama_perplexity(exe, gguf_path, inputs.text, inputs.seqlen, n)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as err:
        result.status, result.detail = "failed", str(err)[:300]
        result.agrees = result.verdict == R.REFUSES
        return result
    result.status = "ran"
    if chunks is not None:
        result.ours_ppl = _ours(inputs, "halves", chunks)
    return _judge(result)


def run_reader(verdict: R.ReaderVerdict, inputs: Inputs, run_all: bool, llama_exe: str | None) -> ReaderResult:
    paths = {"out": str(inputs.folder), "gguf_file": inputs.record.get("gguf_file") or "MODEL.gguf"}
    result = ReaderResult(verdict.reader, verdict.call.format(**paths), verdict.verdict, "not run")
    if verdict.verdict != R.LOADS and not run_all:
        result.detail = f"the README says: {verdict.verdict}" + (f" ({verdict.why})" if verdict.why else "") + \
            ("; --all runs it" if torch_runner(verdict.call) else "")
        return result
    t0 = time.time()
    if verdict.call == R.CALL_LLAMA:
        if llama_exe is None:
            result.status, result.detail = "not installed", INSTALL[LLAMA_PERPLEXITY]
            return result
        result = _run_llama(inputs, result, llama_exe)
    elif torch_runner(verdict.call):
        missing = _missing(verdict)
        if missing:
            result.status = "not installed"
            result.detail = "; ".join(INSTALL.get(m, f"pip install {m}") for m in missing)
            return result
        result = _run_torch(verdict, inputs, result)
    else:
        result.detail = "needs a GPU server; not run by bitsmith verify"
        return result
    result.seconds = round(time.time() - t0, 1)
    return result


# --- the export folder ------------------------------------------------------------------------

def read_record(folder: Path) -> dict:
    """bitsmith-export.json of an export folder (written by every `bitsmith export`)."""
    from . import EXPORT_RECORD

    path = folder / EXPORT_RECORD
    if not folder.is_dir():
        raise BadInput(f"{folder} is not a folder", "pass the --out folder of a `bitsmith export` run")
    if not path.is_file():
        raise BadInput(f"{folder} has no {EXPORT_RECORD}, so it was not written by bitsmith export "
                       "(or by an older version)", "export the checkpoint again with `bitsmith export`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BadInput(f"{path} is not valid JSON ({err})", "export the checkpoint again") from None


def _verdicts(record: dict) -> list[R.ReaderVerdict]:
    return [R.ReaderVerdict(**{**r, "needs": tuple(r.get("needs") or ())}) for r in record.get("readers", [])]


def verify_export(folder: str | Path, data: str = "builtin-eval", seqlen: int = 512, windows: int = 16,
                  checkpoint: str | None = None, run_all: bool = False, llama_exe: str | None = None,
                  only: str | None = None) -> dict:
    """Every reader of the export at `folder`, each beside Bitsmith's model; returns the report."""
    from ..data import load_text
    from ..model import load_model

    folder = Path(folder).expanduser().resolve()
    record = read_record(folder)
    source = checkpoint or record.get("source_checkpoint")
    if not source or not Path(source).is_dir():
        raise BadInput(f"the checkpoint this export was written from ({source}) is not on this machine",
                       "pass it with --checkpoint RUN_DIR/quantized")
    if seqlen < 4 or windows < 1:
        raise BadInput(f"--seqlen {seqlen} / --windows {windows} are too small", "use --seqlen 512 --windows 16")
    llama_exe = llama_exe or shutil.which(LLAMA_PERPLEXITY)
    inputs = Inputs(folder, record, load_text(data, "eval"), seqlen, windows, ours=load_model(str(source)))
    verdicts = [v for v in _verdicts(record) if only is None or only.lower() in v.reader.lower()]
    if not verdicts:
        raise BadInput(f"no reader of this {record['format']} export is named like {only!r}",
                       "leave out --only, or use one of: " + ", ".join(v.reader for v in _verdicts(record)))
    results = [run_reader(v, inputs, run_all, llama_exe) for v in verdicts]
    ran = [r for r in results if r.status in ("ran", "failed")]
    return {"export": str(folder), "format": record["format"], "checkpoint": str(source), "data": data,
            "seqlen": seqlen, "windows": int(_windows(inputs).shape[0]),
            "ours": {"ppl": _ours(inputs, "windows")}, "readers": [asdict(r) for r in results],
            "pass": bool(ran) and all(r.agrees is not False for r in ran)}


def summary(report: dict) -> str:
    lines = [f"{report['format']} export {report['export']}",
             f"Bitsmith ({report['checkpoint']}): perplexity {report['ours']['ppl']:.4f} "
             f"on {report['data']} ({report['windows']} x {report['seqlen']} tokens)"]
    for r in report["readers"]:
        head = f"- {r['reader']} [{r['verdict']}] {r['call']}"
        if r["ppl"] is not None:
            ours = f" beside Bitsmith's {r['ours_ppl']:.4f}" if r["ours_ppl"] is not None else ""
            diff = f" ({100 * r['rel_diff']:.3f}% off)" if r["rel_diff"] is not None else ""
            proto = f", {r['protocol']} protocol" if r["protocol"] != "windows" else ""
            lines.append(f"{head}\n    perplexity {r['ppl']:.4f}{ours}{diff}{proto}")
        else:
            lines.append(f"{head}\n    {r['status']}" + (f": {r['detail']}" if r["detail"] else ""))
        if r["agrees"] is False:
            lines.append("    DOES NOT MATCH what the README says")
    lines.append("every reader that ran did what the README says" if report["pass"]
                 else "some reader did not do what the README says (or none ran)")
    return "\n".join(lines)
