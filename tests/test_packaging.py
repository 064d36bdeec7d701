"""What a non-editable install gets: the wheel ships the sample images, the weights and py.typed."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_wheel_ships_the_package_data(tmp_path):
    pytest.importorskip("setuptools", reason="building without isolation needs setuptools in this environment")
    src = tmp_path / "src"   # a copy: pip builds in the source tree (build/, *.egg-info)
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "runs",
                                                             "__pycache__", ".*_cache", "tests", "benchmarks", "docs"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", str(src), "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("ddpm_codec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for want in ("ddpm_codec/py.typed", "ddpm_codec/samples/cifar10-test-100.npz", "ddpm_codec/samples/README.md",
                 "ddpm_codec/pillow.py", "ddpm_codec/models/weights/cifar10-cpu-small.safetensors",
                 "ddpm_codec/models/weights/cifar10-cpu-small.json", "ddpm_codec/coding/rcc/index_tables.json"):
        assert want in names, want
    assert any(n.startswith("ddpm_codec/models/weights/x0-context/") for n in names)
    assert (ROOT / "ddpm_codec/samples/cifar10-test-100.npz").stat().st_size <= 1 << 20   # the 1 MB cap
