"""Shared by the benchmark scripts: describe the machine, run a case in a fresh interpreter, read
the resident size, and write a section of docs/benchmarks.md.

Each script owns one section, delimited by `<!-- BEGIN name -->` / `<!-- END name -->`, and
replaces it on every run, so the page always holds the latest figures of every benchmark.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from skd.io import write_text_atomic

# SKD_BENCH_MD redirects the page, e.g. to a copy under $OUT when a benchmark runs on a lent GPU.
BENCH_MD = Path(os.environ.get("SKD_BENCH_MD", Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"))
HEADER = "# Benchmarks\n\nEach section is written by the script it names; rerun it to refresh the figures.\n"


def machine() -> str:
    """One line: CPU model and count, GPU if any, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        desc += f", {torch.cuda.get_device_name(0)}"
    return desc


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def write_section(name: str, body: str, path: Path = BENCH_MD) -> None:
    """Replace (or append) the section `name` of the benchmarks page with `body`.

    The section gets the machine, the command and today's date above `body`.
    """
    stamp = (
        f"Machine: {machine()}  \nCommand: `{command()}`  \n"
        f"Date: {datetime.date.today().isoformat()}\n\n"
    )
    block = f"<!-- BEGIN {name} -->\n{stamp}{body.rstrip()}\n<!-- END {name} -->"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    write_text_atomic(path, text)


def spawn_child(script: str, case: dict) -> dict:
    """`script --child <case as JSON>` in a fresh interpreter; its last JSON line, parsed, or
    {"error": <last stderr line>} when it fails (e.g. out of memory)."""
    proc = subprocess.run([sys.executable, script, "--child", json.dumps(case)], capture_output=True,
                          text=True, cwd=Path(script).resolve().parent.parent)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:300]}
    return json.loads(lines[-1])


def rss_kib(field: str = "VmRSS") -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in KiB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")
