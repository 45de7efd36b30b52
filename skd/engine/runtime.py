"""Run-time set-up shared by the entry points: logging, seeds, determinism, autocast, the CLI
error contract (SkdError -> one line on stderr, exit status 2)."""
from __future__ import annotations

import contextlib
import functools
import logging
import random
import re
import sys
from collections.abc import Callable

import torch

from skd.errors import SkdError


def setup_logging(is_main: bool = True) -> None:
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout, force=True)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def configure_numerics(tf32: bool) -> None:
    """--tf32: whether float32 convolutions and matmuls may run as TF32 on GPUs that have it.

    PyTorch lets cuDNN convolutions use TF32 by default; False (skd's default) turns that off for
    cuDNN and matmul, so "float32" means float32, the numerics the original trained with.
    No effect on the CPU.
    """
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def autocast_factory(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument context-manager factory: torch.amp.autocast for --amp bf16/fp16, else a no-op."""
    if amp == "off":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)


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
