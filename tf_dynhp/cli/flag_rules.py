"""What every tf_dynhp program does with its absl flags: a range check when the flags
are parsed (`expect`, before anything is planned or loaded) and, for a usage error,
one line and a pointer to the help (`one_line_usage`; absl's `app.run` prints the
whole help, ~150 lines, above the line that matters).

Imports absl only: ``python tools/train.py`` and ``python tools/export.py`` parse their
flags before TensorFlow loads, so the tools load this file by its path (`tools/_load.py`),
not through the `tf_dynhp` package.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags

__all__ = ["expect", "one_line_usage"]


def expect(name: str, expected: str, ok: Callable[[Any], bool]) -> None:
    """Registers a validator of flag `--name`: absl refuses, when the flags are parsed,
    a value for which `ok` is false, saying "Invalid value received for --name. Expected
    `expected`. Received: name=value". None (the flag left out) passes; a list flag is
    checked item by item, each as a float (an item that is no number is refused)."""

    def check(value: Any) -> bool:
        if value is None:
            return True
        for item in value if isinstance(value, list) else [value]:
            try:
                good = ok(float(item) if isinstance(value, list) else item)
            except (ValueError, OverflowError, TypeError):  # not a number, inf as an int, ...
                good = False
            if not good:
                raise flags.ValidationError(f"Invalid value received for --{name}. Expected {expected}. Received: {name}={item!r}")
        return True

    flags.register_validator(name, check)


def _program() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "program"


def one_line_usage(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """`main` for `app.run`, with an `app.UsageError` it raises printed as one line,
    "<program>: error: <message>", then where the help is, and the error's exit code
    (absl's `app.run` prints the whole help first). A `FileNotFoundError` raised with a
    message only (no errno: the tools' own, e.g. `tf_dynhp.datasets.load` saying where it
    looked for a data set) is printed the same way, without the traceback, and exits
    with 1; one the system raised (a failed `open`) keeps its traceback."""

    @functools.wraps(main)
    def run(argv: list[str]) -> Any:
        try:
            return main(argv)
        except app.UsageError as err:
            program = _program()
            print(f"{program}: error: {err}\n{program}: --helpshort lists the flags, --helpfull all of them.",
                  file=sys.stderr, flush=True)
            sys.exit(err.exitcode)
        except FileNotFoundError as err:
            if err.errno is not None:  # raised by the system (a bug's traceback stays); ours carry a message only
                raise
            print(f"{_program()}: error: {err}", file=sys.stderr, flush=True)
            sys.exit(1)

    return run
