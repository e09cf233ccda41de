"""The GPU path without a GPU: compile every kernel variant ahead of time for NVIDIA targets
(Triton -> PTX -> ptxas cubin runs on the CPU), so a kernel that only the interpreter accepts
(an illegal constexpr, a dtype the backend refuses, shared memory overflow) fails here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from bitsmith.core.client import python_command

# Each case: kernel, bits, dtype, sm, (block_m, block_n, block_k, split>1, num_warps, num_stages)
CASES = [
    ("gemv", 2, "fp16", 90, (1, 128, 128, False, 4, 2)),
    ("gemv", 3, "fp16", 90, (1, 256, 128, True, 8, 2)),
    ("gemv", 4, "bf16", 90, (4, 128, 64, True, 4, 2)),
    ("gemv", 8, "fp16", 80, (2, 64, 128, False, 4, 2)),
    ("dot", 2, "bf16", 80, (16, 128, 64, True, 4, 4)),
    ("dot", 3, "fp16", 90, (16, 64, 128, False, 4, 4)),
    ("dot", 4, "fp16", 90, (128, 128, 64, False, 8, 3)),
    ("dot", 8, "bf16", 90, (64, 128, 64, True, 4, 3)),
    ("dot", 4, "fp32", 80, (32, 64, 64, False, 4, 3)),
]

SCRIPT = textwrap.dedent('''
    import json, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from bitsmith.kernels.dequant_gemm import _gemm_kernel
    from bitsmith.kernels.dequant_gemv import _gemv_kernel

    results = []
    for kernel, bits, dt, sm, (bm, bn, bk, atomic, warps, stages) in json.loads(sys.argv[1]):
        fn = _gemv_kernel if kernel == "gemv" else _gemm_kernel
        sig = {"x_ptr": f"*{dt}", "qw_ptr": "*i32", "s_ptr": f"*{dt}", "z_ptr": f"*{dt}",
               "out_ptr": "*fp32" if atomic else f"*{dt}", "M": "i32", "N": "i32", "K": "i32",
               "stride_xm": "i32", "stride_om": "i32", "SPLIT_K": "i32"}
        const = dict(BITS=bits, GROUP=128, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, ATOMIC=atomic)
        if kernel == "dot":
            const.update(GROUP_M=8, IEEE_FP32=dt == "fp32")
        sig.update({name: "constexpr" for name in const})
        names = list(sig)
        # what the launcher's specialization sees for real shapes: 16-aligned pointers and sizes
        attrs = {(names.index(a),): [["tt.divisibility", 16]]
                 for a in ("x_ptr", "qw_ptr", "s_ptr", "z_ptr", "out_ptr", "N", "K", "stride_xm", "stride_om")}
        c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
                           target=GPUTarget("cuda", sm, 32), options={"num_warps": warps, "num_stages": stages})
        results.append({"kernel": kernel, "bits": bits, "cubin_bytes": len(c.asm["cubin"]),
                        "shared": c.metadata.shared})
    print(json.dumps(results))
''')


def test_kernels_compile_for_sm80_and_sm90():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real compiler, not the interpreter
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    out = subprocess.run(python_command("-c", SCRIPT, json.dumps(CASES)), capture_output=True, text=True,
                         env=env, timeout=600)
    if out.returncode != 0 and ("ptxas" in out.stderr and "not found" in out.stderr):
        pytest.skip("no ptxas in this Triton install")
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(results) == len(CASES)
    for r in results:
        assert r["cubin_bytes"] > 0
        assert r["shared"] <= 100 * 1024  # fits the smaller (sm_80: 163 KB, sm_86: 99 KB) shared memory
