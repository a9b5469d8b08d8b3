"""Tasks: prompts with their answers, labelled positions and a mean-ablation reference set.

  ioi(tokenizer, ...)         Indirect Object Identification (Wang et al. 2022), one template
                              per task, with the ABC reference set
  induction(...)              a random sequence repeated once; loss on the repeated half
  from_jsonl(path, tokenizer) the user's own prompts (prompt, correct, wrong per line)

Example:
    >>> task = jaxablate.tasks.ioi(jaxablate.load_tokenizer("gpt2"), 64, template=0)
    >>> out = jaxablate.sweep(model, task.tokens, masks.single_heads(model.cfg),
    ...                       mean_replacement(model, task.reference_tokens), task.metric)
"""

from jaxablate.tasks.base import Task
from jaxablate.tasks.induction import induction, repeated_tokens
from jaxablate.tasks.ioi import ioi, ioi_tasks, ioi_templates, ioi_vocabulary
from jaxablate.tasks.ioi_toy import ioi_toy
from jaxablate.tasks.prompts import from_jsonl, from_records

__all__ = ["Task", "from_jsonl", "from_records", "induction", "ioi", "ioi_tasks",
           "ioi_templates", "ioi_toy", "ioi_vocabulary", "repeated_tokens"]
