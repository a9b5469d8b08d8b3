"""The model wing: GPT-2 as one Equinox module and everything that reads or writes it.

    config.py       GPT2Config, the frozen config with its round trip to the HF config
    gpt2.py         the GPT-2 module: one sequence per call, five blend points, nothing else
    mask.py         Mask, the keep-weights the model blends (the data type, not mask sets)
    replacement.py  Replacement, the values blended towards
    sae.py          a sparse autoencoder whose features can be ablated
    validation.py   host-side checks of tokens, positions, masks and replacements
    batched.py      forward / run_with_cache over a batch (validated, jitted), Cache
    loading.py      load_gpt2 (hub id, folder, in-memory HF model, bundled:NAME)
    saving.py       save_gpt2 in the Hugging Face layout
    tokenizer.py    load_tokenizer (GPT-2's BPE files ship in gpt2-tokenizer/)
    hub.py          the hub asked only when it can answer
    bundled.py      where the bundled models' files are
    reference.py    the independent references (HF random models, TransformerLens)

Depends on nothing else in jaxablate but `jaxablate.errors`.
"""

from jaxablate.model.batched import Cache, attach_sae, forward, run_with_cache
from jaxablate.model.config import GPT2Config
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.loading import load_gpt2
from jaxablate.model.mask import Mask
from jaxablate.model.replacement import Replacement
from jaxablate.model.sae import SAE
from jaxablate.model.saving import save_gpt2
from jaxablate.model.tokenizer import load_tokenizer

__all__ = ["GPT2", "SAE", "Cache", "GPT2Config", "Mask", "Replacement", "attach_sae",
           "forward", "load_gpt2", "load_tokenizer", "run_with_cache", "save_gpt2"]
