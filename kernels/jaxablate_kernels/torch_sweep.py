"""The PyTorch sweep: `jaxablate.sweep`'s call and result, run by `TorchGPT2`.

    sweep(model, tokens, masks, replacement, metric, chunk_size=None, kernel="triton")
        -> numpy float32 [N, batch]

How it runs: one clean pass caches the stream entering every layer and every layer's z; the
masks are sorted by the first layer they change and cut into chunks; each chunk resumes from
the clean stream at its first mask's layer, reuses that layer's clean z (only the blend and
W_O run there), and runs the later layers with the chunk's masks folded into the batch
(`n * batch` sequences); logits only at the metric's positions and, for a logit difference,
only for its two ids. The same ideas as jaxablate's engine, less its shared-parent reuse for
multi-layer masks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from jaxablate_kernels.torch_gpt2 import KERNELS, TorchGPT2
from jaxablate_kernels.torch_metrics import scorer

HEAD_KINDS = ("heads", "head_positions")
DEFAULT_CPU_BUDGET = 1 << 30  # bytes of live activations per chunk off the GPU


def as_head_mask_set(masks: Any, cfg: Any, seq_len: int) -> Any:
    """A jaxablate `MaskSet` (or a dense stacked `Mask`, converted) of head masks, checked
    against the model and the prompts' length.

    Example:
        >>> as_head_mask_set(jaxablate.masks.single_heads(cfg), cfg, 16).kinds
        ('heads',)
    """
    from jaxablate import masks as masks_lib
    from jaxablate.model.mask import Mask

    if isinstance(masks, Mask):
        masks = masks_lib.from_stacked(masks, cfg, seq_len=seq_len)
    if not isinstance(masks, masks_lib.MaskSet):
        raise TypeError(f"masks: expected a jaxablate MaskSet or a stacked Mask, got "
                        f"{type(masks).__name__}")
    if masks.cfg != cfg:
        raise ValueError(f"masks were built for another model ({masks.cfg}) than this one "
                         f"({cfg})")
    if masks.seq_len is not None and masks.seq_len != seq_len:
        raise ValueError(f"masks were built for sequence length {masks.seq_len}, the prompts "
                         f"have length {seq_len}")
    other = [k for k in masks.kinds if k not in HEAD_KINDS]
    if other:
        raise ValueError(f"the PyTorch path ablates heads only ({', '.join(HEAD_KINDS)}); "
                         f"these masks also set {other}: use jaxablate.sweep for them")
    return masks


def dense_keep(mask_set: Any, idx: np.ndarray, seq_len: int) -> np.ndarray:
    """Keep-weights of masks `idx` as one float32 array: [n, layer, head] for per-head masks,
    [n, layer, seq, head] when any kind is per position (heads times head_positions, which is
    what jaxablate's two blends in a row amount to).

    Example:
        >>> dense_keep(head_pairs(cfg), np.arange(2), 16).shape
        (2, 12, 12)
    """
    cfg = mask_set.cfg
    per_position = "head_positions" in mask_set.kinds
    shape = (len(idx), cfg.n_layers) + ((seq_len,) if per_position else ()) + (cfg.n_heads,)
    keep = np.ones(shape, np.float32)
    row_of = np.full(len(mask_set), -1, np.int64)
    row_of[idx] = np.arange(len(idx))
    for kind in mask_set.kinds:
        mask_id, index, weight = mask_set.entries_of(kind)
        rows = row_of[mask_id]
        sel = rows >= 0
        rows, index, weight = rows[sel], index[sel], weight[sel]
        if kind == "heads" and per_position:
            keep[rows, index[:, 0], :, index[:, 1]] *= weight[:, None]
        else:
            keep[(rows,) + tuple(index.T)] *= weight
    return keep


def replacement_z(replacement: Any, model: TorchGPT2, batch: int, seq: int) -> torch.Tensor:
    """The head replacement as float32 [layer, batch|1, seq|1, head, d_head] on the model's
    device, from a jaxablate `Replacement` (its z) or a tensor: [layer, seq|1, head, d_head]
    (shared, e.g. `TorchGPT2.mean_z`) or [batch, layer, seq|1, head, d_head] (per example).

    Example:
        >>> replacement_z(jaxablate.zero_replacement(jmodel), model, 8, 16).shape
        torch.Size([12, 1, 1, 12, 64])
    """
    from jaxablate.model.replacement import Replacement

    c = model.cfg
    if isinstance(replacement, Replacement):
        if replacement.z is None:
            raise ValueError("replacement has no 'z' values, needed to ablate heads")
        z = torch.tensor(np.asarray(replacement.z, np.float32))
    elif isinstance(replacement, torch.Tensor):
        z = replacement.float()
    else:
        raise TypeError(f"replacement: expected a jaxablate Replacement or a tensor of z "
                        f"values, got {type(replacement).__name__}")
    z = z.to(model.device)
    z = z.unsqueeze(1) if z.ndim == 4 else z.transpose(0, 1) if z.ndim == 5 else z
    ok = (z.ndim == 5 and z.shape[0] == c.n_layers and z.shape[1] in (1, batch)
          and z.shape[2] in (1, seq) and tuple(z.shape[3:]) == (c.n_heads, c.d_head))
    if not ok:
        given = replacement if isinstance(replacement, torch.Tensor) else replacement.z
        raise ValueError(f"replacement z: expected [layer, seq|1, head, d_head] or "
                         f"[batch, layer, seq|1, head, d_head] with layer={c.n_layers}, "
                         f"batch={batch}, seq={seq}, head={c.n_heads}, d_head={c.d_head}; got "
                         f"{list(np.shape(given))}")
    return z


def default_chunk_size(model: TorchGPT2, batch: int, seq: int, n_masks: int,
                       memory_budget: int | None = None) -> int:
    """Masks per chunk so that a layer's live float32 activations for `chunk * batch`
    sequences fit `memory_budget` bytes (default: a quarter of the GPU's free memory, or
    1 GiB on the CPU).

    Example:
        >>> default_chunk_size(model, batch=100, seq=16, n_masks=10296)   # e.g. 160 on a GPU
    """
    c = model.cfg
    per_sequence = 4 * seq * (12 * c.d_model + 3 * c.d_mlp + 3 * c.n_heads * seq)
    if memory_budget is None:
        if model.device.type == "cuda":
            memory_budget = torch.cuda.mem_get_info(model.device)[0] // 4
        else:
            memory_budget = DEFAULT_CPU_BUDGET
    return int(max(1, min(n_masks, memory_budget // (batch * per_sequence))))


@torch.no_grad()
def sweep(
    model: TorchGPT2,
    tokens: Any,
    masks: Any,
    replacement: Any,
    metric: Any,
    chunk_size: int | None = None,
    *,
    kernel: str = "triton",
    reuse_prefix: bool = True,
    memory_budget: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The metric under each of N head ablations, per example: numpy float32 `[N, batch]`,
    as `jaxablate.sweep` returns it for the same arguments.

    model: a `TorchGPT2` (a jaxablate `GPT2` is converted, on the CPU). tokens: int
    [batch, seq]. masks: a jaxablate `MaskSet` of head masks (`masks.single_heads`,
    `head_pairs`, `from_components` of heads, per-position heads) or a stacked `Mask`.
    replacement: a jaxablate `Replacement` or z values (see `replacement_z`). metric: one of
    `jaxablate.metrics`. chunk_size: masks per chunk (default from `memory_budget`, see
    `default_chunk_size`). kernel: "triton" (the fused kernel) or "torch" (the unfused op).
    reuse_prefix=False runs every mask from layer 0. progress(done, total) after each chunk.

    Example:
        >>> out = sweep(TorchGPT2.from_jaxablate(jmodel, "cuda"), tokens,
        ...             jaxablate.masks.head_pairs(cfg), jaxablate.mean_replacement(jmodel, abc),
        ...             jaxablate.metrics.logit_diff(io, s), kernel="triton")   # [10296, batch]
    """
    from jaxablate.ablation.metrics import vocab_columns
    from jaxablate.model.validation import check_tokens

    if not isinstance(model, TorchGPT2):
        model = TorchGPT2.from_jaxablate(model)
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
    score = scorer(metric)
    tokens_np = check_tokens(tokens, model.cfg)
    batch, seq = tokens_np.shape
    mask_set = as_head_mask_set(masks, model.cfg, seq)
    repl = replacement_z(replacement, model, batch, seq)
    positions_np, data = metric.prepare(tokens_np, model.cfg)
    columns_np, data = vocab_columns(metric, data)
    n = len(mask_set)
    if chunk_size is None:
        chunk_size = default_chunk_size(model, batch, seq, n, memory_budget)
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    chunk_size = int(chunk_size)

    device = model.device
    tokens_t = torch.as_tensor(tokens_np, dtype=torch.long, device=device)
    positions = torch.as_tensor(positions_np, dtype=torch.long, device=device)
    columns = None if columns_np is None else torch.as_tensor(columns_np, dtype=torch.long,
                                                              device=device)
    data_t = {k: torch.as_tensor(np.asarray(v), device=device) for k, v in data.items()}
    resid, z_clean = model.clean_pass(tokens_t)
    index = positions[:, :, None].expand(-1, -1, resid.shape[-1])
    clean = model.unembed(torch.gather(resid[-1], 1, index), columns)  # [batch, k, cols]

    first = mask_set.first_layers() if reuse_prefix else np.zeros(n, np.int64)
    order = np.argsort(first, kind="stable")
    out = np.empty((n, batch), np.float32)
    for begin in range(0, n, chunk_size):
        idx = order[begin:begin + chunk_size]
        start = int(first[idx[0]])
        if start >= model.cfg.n_layers:  # masks that change nothing: the clean logits
            logits = clean[None].expand(len(idx), *clean.shape)
        else:
            keep = torch.from_numpy(dense_keep(mask_set, idx, seq)).to(device)
            x0 = resid[start] if reuse_prefix else model.embed(tokens_t)
            z0 = z_clean[start] if reuse_prefix else None
            logits = model.resume(start, x0, keep, repl, positions, columns, z0, kernel)
        out[idx] = score(logits, clean, tokens_t, data_t).float().cpu().numpy()
        if progress is not None:
            progress(min(begin + chunk_size, n), n)
    return out
