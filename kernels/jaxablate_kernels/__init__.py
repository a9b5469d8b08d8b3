"""jaxablate_kernels: the PyTorch comparison path of jaxablate, with a fused Triton kernel.

Installed with `pip install -e ".[kernels]"` (torch, triton); nothing in `jaxablate` imports
it. Triton is imported on the first kernel launch only; `TRITON_INTERPRET=1` runs the kernel
in Triton's CPU interpreter (tests, smoke runs).

Example:
    >>> import jaxablate, jaxablate_kernels as jk
    >>> jmodel = jaxablate.load_gpt2("gpt2")
    >>> model = jk.TorchGPT2.from_jaxablate(jmodel, device="cuda")
    >>> out = jk.sweep(model, tokens, jaxablate.masks.head_pairs(jmodel.cfg),
    ...                jaxablate.mean_replacement(jmodel, abc_tokens),
    ...                jaxablate.metrics.logit_diff(io, s), kernel="triton")   # [10296, batch]
"""

from jaxablate_kernels.blend_project import (
    blend_project,
    blend_project_reference,
    interpreting,
)
from jaxablate_kernels.matmul import matmul
from jaxablate_kernels.torch_gpt2 import KERNELS, TorchGPT2
from jaxablate_kernels.torch_metrics import scorer
from jaxablate_kernels.torch_sweep import default_chunk_size, sweep

__all__ = [
    "KERNELS",
    "TorchGPT2",
    "blend_project",
    "blend_project_reference",
    "default_chunk_size",
    "interpreting",
    "matmul",
    "scorer",
    "sweep",
]
