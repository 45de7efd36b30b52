"""Building and loading the C++/CUDA extension (skd.ext, libs/build.py, libs/check_cuda.sh)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from skd import ext

ROOT = Path(__file__).resolve().parent.parent


def has_toolchain() -> bool:
    return shutil.which(os.environ.get("CXX", "c++")) is not None and shutil.which("ninja") is not None


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600
    )


@pytest.mark.skipif(not has_toolchain(), reason="no C++ compiler or ninja")
def test_extension_builds_and_exposes_the_kernels() -> None:
    module = ext.load()
    assert module is not None, "skd.ext.load() failed although a compiler and ninja exist; run python libs/build.py"
    for name in ("abn_stats", "abn_forward_", "abn_backward_reduce", "abn_backward_apply", "affinity_forward"):
        assert callable(getattr(module, name))
    assert module.with_cuda == ext.builds_cuda()
    assert ext.available()


def test_skd_ext_0_forces_the_fallback() -> None:
    code = "import skd.ext as e; print(e.load() is None, e.available())"
    result = run_python(code, SKD_EXT="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


def test_failed_build_warns_once_and_falls_back(tmp_path: Path) -> None:
    code = (
        "import logging, torch; logging.basicConfig(level=logging.WARNING)\n"
        "import skd.ext as e\n"
        "from skd.nn.inplace_abn import InPlaceABN\n"
        "assert e.load() is None and e.load() is None\n"
        "x = torch.randn(2, 3, 4, 4)\n"
        "print(InPlaceABN(3)(x).shape)\n"
    )
    # A compiler that does not exist and an empty build directory: the build must fail.
    result = run_python(code, CXX=str(tmp_path / "no-such-c++"), SKD_EXT_DIR=str(tmp_path / "build"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch.Size([2, 3, 4, 4])"
    warnings = [line for line in result.stderr.splitlines() if "extension unavailable" in line]
    assert len(warnings) == 1, result.stderr


def test_build_dir_follows_skd_ext_dir_and_torch_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SKD_EXT_DIR", str(tmp_path))
    assert ext.build_dir() == tmp_path
    monkeypatch.delenv("SKD_EXT_DIR")
    default = ext.build_dir(with_cuda=False)
    assert default.parent == Path.home() / ".cache" / "skd" / "ext" and default.name.endswith("-cpu")


@pytest.mark.skipif(not has_toolchain(), reason="no C++ compiler or ninja")
def test_build_script_reports_the_build() -> None:
    # The extension is already built by the test above (or an earlier run): ninja has nothing to do.
    result = subprocess.run(
        [sys.executable, str(ROOT / "libs" / "build.py")], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(ext.build_dir()) in result.stdout
    assert f"CUDA kernels: {'yes' if ext.builds_cuda() else 'no'}" in result.stdout


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc")
def test_check_cuda_script_compiles_every_cu_file() -> None:
    result = subprocess.run(["bash", str(ROOT / "libs" / "check_cuda.sh")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    for cu in sorted((ROOT / "libs" / "src").glob("*.cu")):
        assert f"ok {cu.name}" in result.stdout
