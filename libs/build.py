"""Build the skd C++/CUDA extension ahead of time: `python libs/build.py`.

Same build as the first use of `skd.nn.InPlaceABN` / `skd.nn.affinity.affinity_distance` (via
`skd.ext`), with the compiler output shown. Prints the build directory and whether the CUDA
kernels were included; exits 1 if the build fails. SKD_EXT_DIR chooses the directory.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Run from a checkout without installing: make `skd` importable from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from skd import ext  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="hide the compiler commands and output")
    args = parser.parse_args(argv)
    with_cuda = ext.builds_cuda()
    print(f"skd extension: building {'CPU + CUDA' if with_cuda else 'CPU'} kernels in {ext.build_dir()}", flush=True)
    start = time.perf_counter()
    try:
        module = ext.build(verbose=not args.quiet)
    except Exception as err:  # report any build failure as a message and an exit status
        print(f"skd extension: build FAILED: {err}", file=sys.stderr)
        return 1
    print(f"skd extension: built {module.__file__} in {time.perf_counter() - start:.1f} s")
    print(f"build directory: {ext.build_dir()}")
    print(f"CUDA kernels: {'yes' if module.with_cuda else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
