"""The study wing: the ablation protocol, its statistics and its result.

    protocol.py  Study: baseline, single, cumulative, circuit, interactions, comparison
    screen.py    the screening step (gradient screen, then exact verification)
    patching.py  the optional patching step (activation and path patching, counterfactual)
    optimal.py   optimal ablation in a study: the fit, its section, the circuit's complement
    run.py       Study.run: the options checked, the steps in order, the StudyResult
    stats.py     bootstrap effects, ranks, Spearman, the cliff, interactions, tolerances
    result.py    StudyResult and the JSON form every reader of a result shares
    checks.py    the host-side checks of a Study's arguments
"""

from jaxablate.study.protocol import Study
from jaxablate.study.result import StudyResult

__all__ = ["Study", "StudyResult"]
