"""The one exception type for bad user input, and `cli`, the entry-point wrapper that prints its
message on one line and exits with status 2. Free of torch, so the run launchers in scripts/ use
it too."""
from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable


class SkdError(Exception):
    """Bad input (file, flag, key) with a one-line message naming it; CLI exits with status 2."""


def cli(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap an entry point: SkdError prints `skd: error: <message>` and exits with status 2."""
    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except SkdError as e:
            print(f"skd: error: {one_line_message(e)}", file=sys.stderr)
            return 2
    return wrapped


# How a DataLoader worker (or pin-memory thread) error comes back to the main process:
# type(exc)("Caught <Type> in DataLoader worker process N.\nOriginal Traceback ...\n<module.Type>: <msg>")
_WORKER_WRAPPED = re.compile(r"Caught \w+ in .+?\.\nOriginal Traceback \(most recent call last\):\n")


def one_line_message(exc: BaseException) -> str:
    """The message of `exc`, unwrapped when PyTorch's DataLoader re-raised it from a worker with
    the worker's traceback: then the original message, the text after `<module>.<Type>: ` in the
    traceback's last entry."""
    text = str(exc)
    if not _WORKER_WRAPPED.match(text):
        return text
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    if prefix in text:
        return text.rsplit(prefix, 1)[1].strip()
    last = text.strip().splitlines()[-1]
    return re.sub(r"^[\w.]+: ", "", last)
