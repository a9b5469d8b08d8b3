"""The errors jaxablate raises for bad input, apart from everything else.

Every check of a caller's argument (a shape, a name, a range, a file, an option) raises
`InputError` (a `ValueError`) or `InputTypeError` (a `TypeError`, also an `InputError`) with
one message naming the problem, before anything compiles. Anything else that escapes the
library is a bug and keeps its traceback: the command line reports `InputError` in one line
with exit status 2, and lets every other exception through.

Example:
    >>> try:
    ...     ja.masks.single_heads(cfg, position=99, seq_len=8)
    ... except ja.InputError as error:
    ...     print(error)
    single_heads: position 99 needs seq_len with -seq_len <= position < seq_len (seq_len=8)
"""

from __future__ import annotations


class InputError(ValueError):
    """A bad argument, option, file or combination of them; the message says which."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong kind of object (a `TypeError` and an `InputError`)."""
