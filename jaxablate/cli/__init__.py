"""The command-line wing: `jaxablate study` and `python -m jaxablate`.

    options.py  the parser, the option checks, UsageError
    run.py      running a study from parsed options: load, Study, progress, report
    command.py  main(): the entry point and how each kind of failure is reported
    rank.py     `python -m jaxablate`: the single-head ranking of a model
"""

from jaxablate.cli.command import main

__all__ = ["main"]
