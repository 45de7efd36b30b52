"""--compile survives a broken compiler: a failed compilation (a damaged inductor cache entry:
"ImportError: ... .main.so: file too short", then BackendCompilerFailed) is retried once with a
private cache, then the forward runs eagerly after one warning; the results are the eager ones.
Also: CI gives its run a fresh inductor cache, and no test uses a fixed rendezvous port."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.exc import BackendCompilerFailed

from skd.engine import runtime

ROOT = Path(__file__).resolve().parent.parent


def _damaged_cache_failure() -> BackendCompilerFailed:
    inner = ImportError("/tmp/torchinductor_root/ab/cabcd.main.so: file too short")
    return BackendCompilerFailed(lambda: None, inner, None)


@pytest.fixture
def fresh_cache_state(monkeypatch, tmp_path):
    """The process's inductor cache setting and skd's private-cache choice, restored afterwards."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "shared-cache"))
    monkeypatch.setattr(runtime, "_private_cache", None)
    monkeypatch.setattr(runtime.torch._dynamo, "reset", lambda: None)


def _fake_compile(monkeypatch, failures: int):
    """torch.compile whose compiled function fails `failures` times, as a damaged cache does."""
    calls = {"compiled": 0}

    def compile_(fn):
        def compiled(*args, **kwargs):
            calls["compiled"] += 1
            if calls["compiled"] <= failures:
                raise _damaged_cache_failure()
            return fn(*args, **kwargs)
        return compiled
    monkeypatch.setattr(runtime.torch, "compile", compile_)
    return calls


def test_a_failed_compilation_is_retried_with_a_private_cache(fresh_cache_state, monkeypatch, caplog):
    calls = _fake_compile(monkeypatch, failures=1)
    forward = runtime.RecoveringCompile(lambda x: x * 2 + 1, "the student")
    x = torch.arange(4.0)
    assert torch.equal(forward(x), x * 2 + 1)
    private = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert Path(private).is_dir() and "skd-inductor-" in private
    assert calls["compiled"] == 2 and forward.compiled is not None  # compiled, not eager
    assert ("--compile: compiling the student failed (ImportError: /tmp/torchinductor_root/ab/cabcd.main.so: file "
            f"too short); retrying with a private inductor cache {private}") in caplog.text


def test_a_compiler_that_keeps_failing_falls_back_to_eager_with_one_warning(fresh_cache_state, monkeypatch, caplog):
    _fake_compile(monkeypatch, failures=10 ** 6)
    forward = runtime.RecoveringCompile(lambda x: x.sin(), "the network")
    x = torch.arange(4.0)
    assert torch.equal(forward(x), x.sin()) and torch.equal(forward(x), x.sin())
    assert forward.compiled is None
    eager = [r for r in caplog.records if "running it eagerly" in r.getMessage()]
    assert len(eager) == 1
    assert eager[0].getMessage().startswith("--compile: the network cannot be compiled (ImportError: ")


def test_an_error_of_the_model_itself_is_not_taken_for_the_compiler(fresh_cache_state, monkeypatch):
    _fake_compile(monkeypatch, failures=0)

    def broken(x):
        raise RuntimeError("shapes (2, 3) and (4, 5) do not match")
    with pytest.raises(RuntimeError, match="do not match"):
        runtime.RecoveringCompile(broken, "the student")(torch.zeros(1))


REAL = """
import sys, torch
from skd.engine.runtime import RecoveringCompile
f = RecoveringCompile(lambda x: (x.sin() + 1).relu(), "f")
x = torch.linspace(-3, 3, 16)
print("equal", torch.equal(f(x), (x.sin() + 1).relu()), "compiled", f.compiled is not None)
"""


@pytest.mark.slow
def test_a_real_damaged_inductor_cache_is_recovered_from(tmp_path):
    """A compile fills the cache, every .so in it is truncated to 0 bytes (what a compile killed
    at the wrong moment leaves), and the next process compiles anyway, with a private cache."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    first = subprocess.run([sys.executable, "-c", REAL], capture_output=True, text=True, env=env, timeout=300)
    assert "equal True compiled True" in first.stdout, first.stderr[-2000:]
    damaged = list((tmp_path / "cache").rglob("*.so"))
    assert damaged
    for so in damaged:
        so.write_bytes(b"")
    second = subprocess.run([sys.executable, "-c", REAL], capture_output=True, text=True, env=env, timeout=300)
    assert "equal True compiled True" in second.stdout, second.stderr[-2000:]
    assert "retrying with a private inductor cache" in second.stdout + second.stderr


def test_ci_gives_the_run_a_fresh_inductor_cache():
    script = (ROOT / ".ci" / "run").read_text()
    export = script.index('export TORCHINDUCTOR_CACHE_DIR="$(mktemp -d')
    assert export < script.index("python -m pytest")


def test_no_test_rendezvous_uses_a_fixed_port():
    """A fixed port fails when anything else on the machine holds it (another torchrun, a second
    CI job): torchrun runs get --standalone (a free port), process groups file:// rendezvous."""
    fixed = re.compile(r"master_port=\d|MASTER_PORT[\"']?\s*[:=,]\s*[\"']?\d|tcp://[^\"'{}]*:\d{2,}")
    offenders = [f"{p.name}:{n}" for p in sorted((ROOT / "tests").glob("*.py"))
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if fixed.search(line) and "fixed =" not in line]
    assert offenders == []
