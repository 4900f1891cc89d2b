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
from pathlib import Path
from typing import Any

from absl import app, flags

__all__ = ["ToolError", "expect", "load_dataset", "one_line_usage", "output_file", "output_folder"]


class ToolError(Exception):
    """A refusal of what a tool was given that is no flag's range (a damaged data set file,
    ...): `one_line_usage` prints its message as "<program>: error: <message>", without
    the traceback, and exits with 1."""


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


def _creatable(path: Path) -> str | None:
    """Why the folder `path` can be neither used nor created (None: it can). Looks only:
    nothing is created, so a refusal after this one leaves no trace."""
    for folder in (path, *path.parents):
        if folder.is_dir():
            return None if os.access(folder, os.W_OK | os.X_OK) else f"{folder} is not writable"
        if os.path.lexists(folder):
            return f"{folder} is a file, not a folder"
    return None  # pragma: no cover - the root folder exists


def output_file(name: str, value: str, what: str = "a file") -> Path:
    """The path of flag `--name`, `value`, a file the tool writes, checked before any work:
    not a folder, and its folder existing or creatable (`what` says what the file is, e.g.
    "a Markdown file").

    Raises:
        app.UsageError: saying what was expected and what `value` is.
    """
    path = Path(value).expanduser()
    if path.is_dir():
        raise app.UsageError(f"--{name}={value}: expected the path of {what} to write; that is a folder")
    if path.exists() and not path.is_file():  # a device or a FIFO: the atomic write would replace it by a file
        raise app.UsageError(f"--{name}={value}: expected the path of {what} to write; that is not a regular file "
                             "(a device or a pipe, which the tool would replace by a file)")
    problem = _creatable(path.parent)
    if problem:
        raise app.UsageError(f"--{name}={value}: expected the path of {what} to write; its folder cannot be created "
                             f"({problem})")
    return path


def output_folder(name: str, value: str, what: str = "a folder") -> Path:
    """The path of flag `--name`, `value`, a folder the tool writes into, checked before any
    work: a folder, or a path where one can be created.

    Raises:
        app.UsageError: saying what was expected and what `value` is.
    """
    path = Path(value).expanduser()
    if os.path.lexists(path) and not path.is_dir():
        raise app.UsageError(f"--{name}={value}: expected {what} (existing or to create); that is a file")
    problem = _creatable(path)
    if problem:
        raise app.UsageError(f"--{name}={value}: expected {what} (existing or to create); it cannot be created ({problem})")
    return path


def load_dataset(name: str, data_dir: str | None = None, **kwargs: Any):
    """`tf_dynhp.datasets.load(name, data_dir, **kwargs)` for a tool: a data set it finds but
    cannot use (a truncated or corrupt file, a SHA256SUMS mismatch, the other data set in
    `data_dir`: `load`'s ValueError) is a `ToolError` with `load`'s message, which names
    the file. Only this call is covered: a ValueError elsewhere keeps its traceback.
    Imports TensorFlow (through `tf_dynhp`) when called, not before."""
    from tf_dynhp import datasets  # noqa: PLC0415

    try:
        return datasets.load(name, data_dir, **kwargs)
    except ValueError as err:
        raise ToolError(f"the {name} data set cannot be read: {err}") from err


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
        except ToolError as err:
            print(f"{_program()}: error: {err}", file=sys.stderr, flush=True)
            sys.exit(1)
        except FileNotFoundError as err:
            if err.errno is not None:  # raised by the system (a bug's traceback stays); ours carry a message only
                raise
            print(f"{_program()}: error: {err}", file=sys.stderr, flush=True)
            sys.exit(1)

    return run
