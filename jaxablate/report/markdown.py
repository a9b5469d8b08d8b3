"""The Markdown pieces every section of summary.md is made of: numbers, fractions and tables
(`jaxablate.report.summary` and the sections in their own modules, `optimal_summary`).

    number(value, digits=4) -> str       4 significant digits, "–" for null/NaN, yes/no
    fraction(value) -> str               3 decimals (float32 noise such as -9e-09: 0.000)
    markdown_table(header, rows, align)  a Markdown table as lines

Example:
    >>> markdown_table(["a", "b"], [("x", 0.5)])
    ['| a | b |', '|---|---:|', '| x | 0.5 |']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def number(value: Any, digits: int = 4) -> str:
    """`value` for a table cell: `digits` significant digits, "–" for None or a non-finite
    float, "yes"/"no" for a bool, an int as it is.

    Example:
        >>> number(0.123456), number(None), number(True)
        ('0.1235', '–', 'yes')
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: str = "") -> list[str]:
    """A Markdown table as lines; `align` has one letter per column, "l" or "r" (default: the
    first column left, the others right). Cells that are not strings go through `number`.

    Example:
        >>> markdown_table(["component", "effect"], [("`0.1`", 2.5)], "lr")[2]
        '| `0.1` | 2.5 |'
    """
    def cell(value: Any) -> str:
        return (value if isinstance(value, str) else number(value)).replace("|", "\\|")

    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def fraction(value: Any) -> str:
    """A fraction to 3 decimals, "–" for None or NaN (float32 noise such as -9e-09 reads
    0.000).

    Example:
        >>> fraction(0.87654), fraction(-1e-9)
        ('0.877', '0.000')
    """
    text = "–" if value is None or not math.isfinite(value) else f"{float(value):.3f}"
    return "0.000" if text == "-0.000" else text
