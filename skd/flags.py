"""Flag building blocks: value types that carry their own range check, and `Flag`, one flag's
definition (name, type, default, help) that the parsers of skd.options and the term list of
skd.engine.terms share.

A value out of range fails while the command line is parsed, with the flag and the value named:
`--lambda-pi -1: must not be negative`.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def str2bool(value: str | bool) -> bool:
    """`True/False`, `yes/no`, `1/0`, `on/off` (any case) -> bool, as the original's flags take them."""
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("true", "t", "yes", "y", "1", "on"):
        return True
    if v in ("false", "f", "no", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value}: expected True or False")


def size_pair(value: str) -> tuple[int, int]:
    """`512` or `512,1024` (H,W) -> (H, W)."""
    try:
        parts = [int(p) for p in value.replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value}: expected H,W or one integer") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{value}: expected H,W or one integer")
    return parts[0], parts[1]


def number(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, what: str | None = None) -> Callable[[str], Any]:
    """A parser type for `kind` (int or float) in [low, high] (open ends with low_open/high_open).

    The returned function raises argparse.ArgumentTypeError("VALUE: must be ...") for a value that
    does not parse, is not finite, or lies outside the range; `what` overrides the range wording.
    """
    if low is not None and high is not None:
        rule = what or f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        rule = what or (("must be positive" if low == 0 else f"must be greater than {low:g}") if low_open
                        else ("must not be negative" if low == 0 else f"must be at least {low:g}"))
    elif high is not None:
        rule = what or f"must be {'below' if high_open else 'at most'} {high:g}"
    else:
        rule = what or "must be a finite number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text}: not {'an integer' if kind is int else 'a number'}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text}: must be a finite number")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"{text}: {rule}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"{text}: {rule}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


# The ranges the flags use most.
FLOAT = number(float)
NONNEG = number(float, 0)
POSITIVE = number(float, 0, low_open=True)
FRACTION = number(float, 0, 1, high_open=True)      # [0, 1)
UNIT = number(float, 0, 1, low_open=True)           # (0, 1]
NONNEG_INT = number(int, 0)
POSITIVE_INT = number(int, 1)


@dataclass(frozen=True)
class Flag:
    """One command-line flag: `--name`, its type (with its range check), default and help.

    `nargs`/`const`/`choices` are passed to argparse as they are. Booleans use `switch`.
    """

    name: str
    type: Callable[[str], Any] | None
    default: Any
    help: str
    choices: Sequence[str] | None = None
    nargs: str | None = None
    const: Any = None

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    def add_to(self, group: argparse._ActionsContainer) -> None:
        kwargs: dict[str, Any] = {"default": self.default, "help": self.help}
        if self.type is not None:
            kwargs["type"] = self.type
        for key in ("choices", "nargs", "const"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        group.add_argument(self.name, **kwargs)


def switch(name: str, default: bool | None, help: str) -> Flag:
    """A boolean flag: `--x`, `--x True`, `--x false`, ... (the original's str2bool style)."""
    return Flag(name, str2bool, default, help, nargs="?", const=True)


def choice(name: str, choices: Sequence[str], default: str, help: str) -> Flag:
    return Flag(name, None, default, help, choices=tuple(choices))
