"""What every platform's PyInstaller spec shares: the two programs (window and worker)
in one folder, the hidden imports that Bitsmith's registries and transformers' lazy
modules need, and the bundled resources. The spec files differ only in icons and names."""

from __future__ import annotations

from pathlib import Path

from PyInstaller.utils.hooks import collect_data_files, collect_submodules, copy_metadata

import os
import sys

ROOT = Path(__file__).resolve().parent.parent
# build.sh stages a plain `bitsmith` package here (PyInstaller cannot follow the editable
# install's package-dir mapping); it must come first on the path.
STAGE = Path(os.environ.get("BITSMITH_STAGE", ROOT / "build" / "stage"))
sys.path.insert(0, str(STAGE))

# Job kinds and CLI commands are found with pkgutil at run time: name them all.
HIDDEN = (collect_submodules("bitsmith")
          + collect_submodules("transformers.models.llama")
          + collect_submodules("transformers.models.mistral")
          + collect_submodules("transformers.models.qwen2")
          + collect_submodules("transformers.models.phi3")
          + collect_submodules("transformers.models.gpt2")
          + collect_submodules("transformers.models.auto")
          + ["transformers.integrations.ggml", "gguf", "safetensors.torch", "pyqtgraph"])

# transformers reads the versions of its dependencies from their metadata at import time.
METADATA = []
for dist in ("transformers", "tokenizers", "huggingface_hub", "safetensors", "torch", "numpy", "tqdm",
             "regex", "requests", "packaging", "filelock", "pyyaml", "accelerate", "gguf", "bitsmith"):
    try:
        METADATA += copy_metadata(dist)
    except Exception:  # a missing optional distribution is not an error here
        pass

DATAS = ([(str(ROOT / "resources"), "bitsmith/resources")]
         + collect_data_files("transformers", include_py_files=True, includes=["**/*.py"])
         + collect_data_files("pyqtgraph") + collect_data_files("gguf") + METADATA)

# Large packages the app does not use. Triton only serves CUDA builds of torch: a CPU
# bundle leaves it out (the kernels fall back to the exact torch path).
import torch  # noqa: E402

EXCLUDES = ["torchvision", "torchaudio", "tensorflow", "jax", "matplotlib", "IPython", "tkinter",
            "pytest", "hypothesis"] + ([] if torch.version.cuda else ["triton"])
