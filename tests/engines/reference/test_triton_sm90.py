"""Every Triton kernel compiles for the H100 (sm_90), ahead of time, on a machine without a GPU:
triton's NVIDIA backend lowers each kernel through PTX with its bundled ptxas, with the bf16 and
float32 specializations and the launch options the engine uses. The interpreter (test_triton.py)
checks what the kernels compute; this checks that the GPU compiler accepts them (tl.dot tile
shapes, types, loops), before any GPU is lent. Skipped where triton has no NVIDIA backend."""
from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    HAVE_NVIDIA = "nvidia" in triton.backends.backends
except ImportError:  # an older or newer layout of triton's compiler API
    HAVE_NVIDIA = False

pytestmark = pytest.mark.skipif(not HAVE_NVIDIA, reason="triton without its NVIDIA backend")

H100 = dict(head_dim=128, group=4, block_size=16)


def compile_sm90(kernel, types: dict, constexprs: dict, **options):
    signature = {name: "constexpr" if name in constexprs else types[name] for name in kernel.arg_names}
    return triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                          options=options)


def ints(*names):
    return {n: "i32" for n in names}


@pytest.fixture(scope="module")
def modules():
    import importlib

    # through sys.modules: test_triton.py's interpreted copies leave the package attributes behind
    return (importlib.import_module("engines.reference.triton_attention"),
            importlib.import_module("engines.reference.triton_ops"))


@pytest.mark.parametrize("dt,dot_f32", [("bf16", False), ("fp32", True)])
def test_attention_kernels_compile(modules, dt, dot_f32):
    ta, _ = modules
    d, group, bs = H100["head_dim"], H100["group"], H100["block_size"]
    cache = dict(k_cache_ptr=f"*{dt}", v_cache_ptr=f"*{dt}", block_tables_ptr="*i32", seq_lens_ptr="*i32")
    strides = ints("stride_qt", "stride_qh", "stride_cb", "stride_cs", "stride_ch", "stride_bt", "head_dim")
    compile_sm90(ta._store_kv_kernel,
                 dict(key_ptr=f"*{dt}", value_ptr=f"*{dt}", k_cache_ptr=f"*{dt}", v_cache_ptr=f"*{dt}", slot_ptr="*i64",
                      **ints("stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_cb", "stride_cs", "stride_ch",
                             "num_kv_heads", "head_dim", "block_size")),
                 dict(BLOCK_H=8, BLOCK_D=d))
    compile_sm90(ta._decode_split_kernel,
                 dict(part_ptr="*fp32", q_ptr=f"*{dt}", scale="fp32", **cache, **strides,
                      **ints("stride_ps", "stride_ph", "programs_per_head")),
                 dict(GROUP=group, GROUP_PAD=16, BLOCK_D=d, BLOCK_SIZE=bs, SPLIT=ta.SPLIT_TOKENS, TILE=ta.DECODE_TILE,
                      DOT_F32=dot_f32))
    compile_sm90(ta._decode_merge_kernel,
                 dict(out_ptr=f"*{dt}", part_ptr="*fp32", seq_lens_ptr="*i32",
                      **ints("stride_ot", "stride_oh", "stride_ps", "stride_ph", "head_dim")),
                 dict(SPLIT=ta.SPLIT_TOKENS, BLOCK_D=d))
    compile_sm90(ta._prefill_kernel,
                 dict(out_ptr=f"*{dt}", q_ptr=f"*{dt}", query_start_loc_ptr="*i32", scale="fp32", first_seq="i32",
                      **cache, **strides, **ints("stride_ot", "stride_oh")),
                 dict(GROUP=group, GROUP_PAD=group, BLOCK_Q=64 // group, BLOCK_D=d, BLOCK_SIZE=bs,
                      TILE=ta.PREFILL_TILE, DOT_F32=dot_f32))


@pytest.mark.parametrize("dt", ["bf16", "fp32"])
def test_fused_op_kernels_compile(modules, dt):
    _, ops = modules
    compile_sm90(ops._add_rms_norm_kernel,
                 dict(x_ptr=f"*{dt}", res_ptr=f"*{dt}", w_ptr=f"*{dt}", out_ptr=f"*{dt}", res_out_ptr=f"*{dt}",
                      eps="fp32", **ints("stride_x", "stride_r", "stride_o", "stride_ro", "n_cols")),
                 dict(HAS_RESIDUAL=True, BLOCK=4096), num_warps=16)
    compile_sm90(ops._rotary_kernel,
                 dict(x_ptr=f"*{dt}", pos_ptr="*i64", cos_ptr="*fp32", sin_ptr="*fp32",
                      **ints("stride_t", "stride_cos", "num_heads", "head_dim", "half")),
                 dict(BLOCK_H=8, BLOCK_HALF=64))
    compile_sm90(ops._silu_and_mul_kernel,
                 dict(x_ptr=f"*{dt}", out_ptr=f"*{dt}", **ints("stride_x", "stride_o", "n_cols")), dict(BLOCK=1024))
