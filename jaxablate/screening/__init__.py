"""The screening wing: cheap scores of every component, to choose what to sweep exactly.

    attribution.py  attribute: gradients / integrated gradients of the metric in the mask
    patterns.py     attention-pattern scores (previous-token, induction, duplicate-token)
"""

from jaxablate.screening.attribution import Attribution, attribute
from jaxablate.screening.patterns import AttentionScores, attention_scores

__all__ = ["Attribution", "AttentionScores", "attention_scores", "attribute"]
