"""What the GPU check (device_check.py) runs at: its configs at full and smoke sizes, the
model-FLOP count of a train step, and the dense bf16 peaks MFU is measured against."""
from __future__ import annotations

import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))

# Dense bf16 tensor-core peaks, by a substring of jax's device_kind (most specific first).
# NVIDIA's datasheets list bf16 "with sparsity"; the dense figure is half of it.
PEAK_BF16 = (
    ("H200 NVL", 835.5e12, "NVIDIA H200 NVL datasheet: 1,671 TFLOP/s bf16 with sparsity, /2 dense"),
    ("H200", 989.4e12, "NVIDIA H200 (SXM) datasheet: 1,979 TFLOP/s bf16 with sparsity, /2 dense"),
    ("H100 NVL", 835.5e12, "NVIDIA H100 NVL datasheet: 1,671 TFLOP/s bf16 with sparsity, /2 dense"),
    ("H100 PCIe", 756.0e12, "NVIDIA H100 PCIe datasheet: 1,513 TFLOP/s bf16 with sparsity, /2 dense"),
    ("H100", 989.4e12, "NVIDIA H100 SXM5 datasheet: 1,979 TFLOP/s bf16 with sparsity, /2 dense"),
    ("A100", 312.0e12, "NVIDIA A100 datasheet: 312 TFLOP/s dense bf16"),
)


def peak_for(kind: str):
    for key, peak, source in PEAK_BF16:
        if key.lower() in kind.lower():
            return peak, source
    return None, f"no dense bf16 peak known for device kind {kind!r}: MFU not computed"


def base_config(args, **model):
    """configs/base_256.py with the check's batch and text length (and `model` overrides)."""
    from muse_jax import config as config_lib

    c = config_lib.load_file(config_lib.CONFIG_DIR / "base_256.py")
    c.text.max_length = args.text_len
    c.eval.num_samples = 0
    c.data.batch_size = args.batch
    if args.smoke:
        c.model.update(width=64, depth=2, num_heads=2, mlp_dim=256, text_dim=32, codebook_size=1024)
    c.model.update(model)
    config_lib.validate(c)
    return c


def amused_config(args):
    """aMUSEd-256's transformer dims on base_256's MaskedTransformer (see the docstring)."""
    c = base_config(args)
    if args.smoke:
        c.model.update(width=64, depth=2, num_heads=2, mlp_dim=176, text_dim=24)
    else:
        c.model.update(width=1024, depth=22, num_heads=16, mlp_dim=2816, text_dim=768)
    c.text.max_length = 8 if args.smoke else 77  # CLIP's 77 positions
    return c


def vqgan_config(args):
    from muse_jax import config as config_lib

    c = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_256.py")
    if args.smoke:  # still f=16 and 256 px, far fewer channels
        c.model.update(channels=32, num_res_blocks=1, norm_groups=8, codebook_size=1024)
    return c


def dims_of(c) -> dict:
    m = c.model
    return {"width": m.width, "depth": m.depth, "heads": m.num_heads, "mlp": m.mlp_dim,
            "codebook": m.codebook_size, "grid": m.grid_size, "text_dim": m.text_dim,
            "text_len": c.text.max_length, "dtype": m.dtype, "remat": m.remat,
            "dropout": m.dropout}


def train_flops(c, batch: int, params: int) -> dict:
    """Model FLOPs of one train step: 6 P T + attention, and every matmul counted one by one."""
    sys.path.insert(0, HERE)
    from base_step import model_flops  # noqa: PLC0415

    m = c.model
    n, l = m.grid_size ** 2, c.text.max_length
    attention = 3 * batch * m.depth * 4 * m.width * n * (n + l)
    dims = types.SimpleNamespace(batch=batch, width=m.width, depth=m.depth, heads=m.num_heads,
                                 mlp=m.mlp_dim, grid=m.grid_size, codebook=m.codebook_size,
                                 tokens=n, text_len=l, text_dim=m.text_dim)
    return {"six_pt_plus_attention": 6 * params * batch * n + attention,
            "attention": attention, "matmul_count": model_flops(dims)["train_step"]}
