"""The kernels compile for a real GPU target (sm_90) -- no GPU needed.

The interpreter runs the kernels as NumPy, which accepts code the compiler rejects (type changes in
loop-carried values, fp32 literals meeting fp64 tensors, ...). ``triton.compile`` with an explicit
``GPUTarget`` runs the whole pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin with Triton's bundled
ptxas) on CPU. It must run in a process without ``TRITON_INTERPRET``, hence the subprocess.

The kernel specialises on the term mask only, and each primitive's code is guarded by its own bit,
so the variants are every primitive alone (its code) on a single-pass tile, and the mask of every
softmax primitive at once (all row sums and per-element terms together) and bitemp on every tile
shape and dtype of the launch heuristic; then the soft-target kernel's structural variants.
"""

import os
import subprocess
import sys
import textwrap

from robustkernels.specs import PRIMITIVES

SCRIPT = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from robustkernels.specs import KERNEL_SLOTS, PRIMITIVES
    from robustkernels.triton import kernels, launch, op
    import torch

    assert not op.INTERPRETED
    target = GPUTarget("cuda", 90, 32)
    dtypes = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float64: "fp64", torch.float16: "fp16"}
    # (logits dtype, K, per-row eps, with grad, int32 labels): single pass with several rows,
    # column-tiled, fp64 single pass, fp16 forward only.
    cases = [(torch.float32, 1000, False, True, False), (torch.bfloat16, 20000, True, True, True),
             (torch.float64, 7, True, True, False), (torch.float16, 13, False, False, False)]
    bitemp = 1 << PRIMITIVES["bitemp"].bit
    variants = [(name, 1 << p.bit, cases if name == "bitemp" else cases[:1]) for name, p in PRIMITIVES.items()]
    variants.append(("every softmax primitive", (1 << len(PRIMITIVES)) - 1 - bitemp, cases))
    def compile_forward(terms, dtype, k, label_only, float_target, weight, per_row, grad, int32=False):
        cfg = launch.forward_config(4096, k, dtype, soft=not label_only)
        cdt = "fp64" if dtype == torch.float64 else "fp32"
        target_type = "*bf16" if float_target else "*i32" if int32 else "*i64"
        sig = {"logits_ptr": "*" + dtypes[dtype], "stride_row": "i32", "target_ptr": target_type,
               "stride_target": "i32", "stride_target_col": "i32", "weight_ptr": "*" + cdt,
               "row_weight_ptr": "*" + cdt, "eps_ptr": "*fp32", "stride_eps": "i32", "eps_scalar": "fp32",
               "loss_ptr": "*" + cdt, "grad_ptr": "*" + dtypes[dtype], "inv_count_ptr": "*" + cdt,
               "grad_scale": "fp32", "num_rows": "i32", "num_classes": "i32", "ignore_index": "i32",
               "target_scale": "fp32", "uniform_share": "fp32"}
        sig.update({s: "i32" if s in op._INT_SLOTS else "fp32" for s in KERNEL_SLOTS})
        consts = dict(TERMS=terms, LABEL_ONLY=label_only, FLOAT_TARGET=float_target, HAS_WEIGHT=weight,
                      EPS_PER_ROW=per_row, HAS_GRAD=grad, HAS_INV_COUNT=grad and not float_target,
                      FP64=dtype == torch.float64, ROWS=cfg.rows, BLOCK_K=cfg.block_k, SINGLE_PASS=cfg.single_pass)
        sig.update({c: "constexpr" for c in consts})
        compiled = triton.compile(ASTSource(kernels.fused_loss_kernel, sig, consts), target=target,
                                  options={"num_warps": cfg.num_warps})
        assert compiled.asm["cubin"], (terms, dtype, k)

    for name, terms, shapes in variants:
        for dtype, k, per_row, grad, int32 in shapes:
            compile_forward(terms, dtype, k, True, False, False, per_row, grad, int32)
        print("ok", name, flush=True)
    for per_row in (True, False):
        for dtype in ("bf16", "fp64"):
            sig = {"grad_ptr": "*" + dtype, "grad_out_ptr": "*fp32", "stride_grad_out": "i32", "num_rows": "i32",
                   "num_classes": "i32", "PER_ROW": "constexpr", "FP64": "constexpr", "ROWS": "constexpr",
                   "BLOCK_K": "constexpr"}
            consts = dict(PER_ROW=per_row, FP64=dtype == "fp64", ROWS=2, BLOCK_K=1024)
            triton.compile(ASTSource(kernels.rescale_grad_kernel, sig, consts), target=target)
    print("ok rescale")
    # The expected loss over a target: every soft primitive at once (float target, weights) on a
    # single-pass tile and fp64, nce + agce column-tiled with per-row eps, gce forward only in
    # fp16, and the label-only rows with row weights for every softmax primitive.
    from robustkernels.specs import SOFT_TARGET_TERMS
    nce_agce = 1 << PRIMITIVES["nce"].bit | 1 << PRIMITIVES["agce"].bit
    softmax_all = (1 << len(PRIMITIVES)) - 1 - bitemp
    soft_cases = [  # terms, dtype, K, label only, float target, weight, per-row eps, grad
        (SOFT_TARGET_TERMS, torch.float32, 1000, False, True, True, False, True),
        (SOFT_TARGET_TERMS, torch.float64, 7, False, False, True, True, True),
        (nce_agce, torch.bfloat16, 20000, False, True, True, True, True),
        (1 << PRIMITIVES["gce"].bit, torch.float16, 13, False, True, False, False, False),
        (softmax_all, torch.bfloat16, 20000, True, False, True, False, True),
    ]
    for case in soft_cases:
        compile_forward(*case)
    print("ok soft")
    """
)


def test_every_kernel_variant_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-6000:]
    assert res.stdout.count("ok ") == len(PRIMITIVES) + 3
