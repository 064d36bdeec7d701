"""The README's quick start runs as written, in an empty folder with nothing but the package (no
../shared, no downloads), so the README cannot rot; and its shape stays what a first reader needs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(info: str) -> list[str]:
    """The bodies of the README's code blocks fenced as ```<info>."""
    return re.findall(rf"^```{re.escape(info)}\n(.*?)^```$", README, flags=re.M | re.S)


@pytest.mark.slow
@pytest.mark.subprocess
def test_quick_start_runs_in_an_empty_folder(tmp_path):
    from PIL import Image

    (sh,) = blocks("sh quickstart")
    (py,) = blocks("python quickstart")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    work = tmp_path / "work"
    work.mkdir()
    outputs = {}
    for line in sh.splitlines():
        r = subprocess.run(line, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{line}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        outputs[line.split("#")[0].strip()] = r
    r = subprocess.run([sys.executable, "-c", py], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    image = np.asarray(Image.open(work / "img.png"))
    assert image.shape == (32, 32, 3)
    assert np.array_equal(np.asarray(Image.open(work / "out.png")), image)
    assert np.array_equal(np.asarray(Image.open(work / "copy.png")), image)
    assert (work / "small.ddpm").stat().st_size < (work / "img.ddpm").stat().st_size
    assert (work / "preview.png").exists() and (work / "rd.png").exists() and (work / "again.ddpm").exists()
    rd = next(v for k, v in outputs.items() if k.startswith("ddpm-codec rd-curve cifar10"))
    assert "shipped CIFAR-10 sample" in rd.stderr and "--download" in rd.stderr
    enc = outputs["ddpm-codec encode img.png -o img.ddpm"].stdout
    assert "T-t+1" in enc and "lossless" in enc and "model bound" in enc   # what the README explains


def test_readme_is_short_wrapped_and_sets_up_as_ci_does():
    lines = README.splitlines()
    assert len(lines) <= 125
    prose = re.sub(r"^```.*?^```$", "", README, flags=re.M | re.S).splitlines()
    assert [ln for ln in prose if len(ln) > 100 and not ln.startswith("|")] == []
    setup = [ln.split("#")[0].strip() for ln in blocks("")[0].splitlines()]
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup and all(cmd in ci for cmd in setup) and "python -m pytest -q tests" in README
    for path in re.findall(r"`((?:docs|ddpm_codec|tests)/[\w./-]+)`", README):
        assert (ROOT / path).exists(), path
