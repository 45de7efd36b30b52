"""Builds and loads the skd C++/CUDA extension from libs/src on first use.

`load()` returns the compiled module, or None when it cannot be built (no compiler, no ninja, a
compile error) or when SKD_EXT=0. `kernels_for(x, impl)` is the one rule for which code runs a
tensor: the compiled kernels, or None for the pure-PyTorch twin that computes the same thing
(`skd.nn.inplace_abn`, `skd.nn.affinity`). `libs/build.py` builds ahead of time.

The module's functions are documented in libs/src/skd_ops.h. Build directory: $SKD_EXT_DIR, or
~/.cache/skd/ext/<torch version>-<cuXYZ|cpu>; ninja rebuilds only what changed. The CUDA kernels
are included when torch was built with CUDA and nvcc is found (CUDA_HOME, else PATH); the
sources are found next to the package (skd/../libs/src), i.e. in a source or editable install.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import shutil
from pathlib import Path
from types import ModuleType

import torch

from skd.errors import SkdError

logger = logging.getLogger(__name__)

NAME = "skd_ext"
SOURCE_DIR = Path(__file__).resolve().parent.parent / "libs" / "src"
CPU_SOURCES = ("dispatch.cpp", "inplace_abn_cpu.cpp", "affinity_cpu.cpp")
# cuda_binding.cpp needs torch's CUDA headers, which a CPU build of torch does not ship.
CUDA_SOURCES = ("inplace_abn_cuda.cu", "affinity_cuda.cu", "cuda_binding.cpp")
# How a caller asks for an implementation: the kernels when usable, the kernels or an error,
# or the PyTorch code.
KERNEL_IMPLS = ("auto", "ext", "torch")


def nvcc_path() -> str | None:
    """The nvcc that torch's extension builder will use, or None."""
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is not None and (Path(CUDA_HOME) / "bin" / "nvcc").is_file():
        return str(Path(CUDA_HOME) / "bin" / "nvcc")
    return shutil.which("nvcc")


def builds_cuda() -> bool:
    """True when the build includes the CUDA kernels: torch has CUDA and nvcc is found."""
    return torch.version.cuda is not None and nvcc_path() is not None


def build_dir(with_cuda: bool | None = None) -> Path:
    """$SKD_EXT_DIR, else ~/.cache/skd/ext/<torch version>-<cuXYZ|cpu>."""
    if os.environ.get("SKD_EXT_DIR"):
        return Path(os.environ["SKD_EXT_DIR"]).expanduser()
    with_cuda = builds_cuda() if with_cuda is None else with_cuda
    tag = "cu" + torch.version.cuda.replace(".", "") if with_cuda and torch.version.cuda else "cpu"
    version = re.sub(r"[^0-9A-Za-z.]+", "_", torch.__version__.split("+")[0])
    return Path.home() / ".cache" / "skd" / "ext" / f"{version}-{tag}"


def build(verbose: bool = False) -> ModuleType:
    """Compile (or reuse) and import the extension. Raises whatever the build raises."""
    from torch.utils.cpp_extension import load as load_extension

    missing = [name for name in CPU_SOURCES + CUDA_SOURCES if not (SOURCE_DIR / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{SOURCE_DIR}: missing {', '.join(missing)}; the extension builds only from a source "
            "checkout (pip install -e .)"
        )
    with_cuda = builds_cuda()
    sources = list(CPU_SOURCES) + (list(CUDA_SOURCES) if with_cuda else [])
    directory = build_dir(with_cuda)
    directory.mkdir(parents=True, exist_ok=True)
    # -fopenmp: at::parallel_for is a header template that is serial without it; the linked
    # libgomp.so.1 resolves at run time to the copy torch has already loaded. -fno-trapping-math
    # (as torch itself is built) lets GCC vectorise the activation selects in the CPU loops.
    cflags = ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    cflags += ["-DSKD_WITH_CUDA"] if with_cuda else []
    return load_extension(
        name=NAME,
        sources=[str(SOURCE_DIR / name) for name in sources],
        extra_cflags=cflags,
        extra_cuda_cflags=["-O3"],
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(SOURCE_DIR)],
        build_directory=str(directory),
        with_cuda=with_cuda,
        verbose=verbose,
    )


@functools.cache
def load() -> ModuleType | None:
    """The extension module, built on the first call of the process; None to use the fallback.

    SKD_EXT=0 forces None. A failed build logs one warning and returns None; the result is cached,
    so the build is tried (and the warning logged) once per process.
    """
    if os.environ.get("SKD_EXT", "1") == "0":
        logger.info("SKD_EXT=0: skd C++/CUDA extension disabled; using the PyTorch fallback")
        return None
    try:
        return build()
    except Exception as err:  # any failure (compiler, ninja, nvcc, import) means: use the fallback
        logger.warning(
            "skd C++/CUDA extension unavailable (%s); using the pure-PyTorch fallback. "
            "Run `python libs/build.py` for the compiler output.",
            _summary(err),
        )
        return None


def _summary(err: Exception, limit: int = 300) -> str:
    """One line out of a build error: torch puts the whole ninja log in the message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    head = lines[0]
    if head.startswith("Error building extension"):
        head = head.split(":", 1)[0]
        detail = next((line for line in lines[1:] if "error" in line.lower() or "not found" in line.lower()), "")
        head = f"{head}: {detail}" if detail else head
    return head if len(head) <= limit else head[: limit - 3] + "..."


def available() -> bool:
    """True when `load()` gives the compiled extension."""
    return load() is not None


def kernels_for(x: torch.Tensor, impl: str, what: str) -> ModuleType | None:
    """The compiled module that runs `x`, or None for the PyTorch code path.

    impl "torch": None. "auto": the module when it is built and has kernels for x's device (CPU,
    or CUDA when built with CUDA), else None. "ext": the same module, or an SkdError naming
    `what` (the caller, e.g. "inplace_abn") when it cannot run x.
    """
    if impl not in KERNEL_IMPLS:
        raise SkdError(f"{what} impl={impl!r}: unknown; use one of {', '.join(KERNEL_IMPLS)}")
    if impl == "torch":
        return None
    module = load()
    if module is not None and x.device.type in ("cpu", "cuda") and (not x.is_cuda or module.with_cuda):
        return module
    if impl == "ext":
        raise SkdError(
            f"{what} impl='ext': the skd extension is not available for {x.device} tensors "
            "(see the warning above, or run `python libs/build.py`); use impl='auto'"
        )
    return None
