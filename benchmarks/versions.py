"""Library versions (issue 25, item 4): do exact files decode bit-exactly under the oldest and the newest torch,
numpy and numba that pyproject.toml allows, and do files move between those versions both ways?

    python benchmarks/versions.py --venvs ~/venvs                          # every combination below
    python benchmarks/versions.py --venvs ~/venvs --only oldest newest -n 2
    python benchmarks/versions.py --venvs ~/venvs --torch-index https://download.pytorch.org/whl/cpu

Not CI: it installs packages. Each combination gets a virtual environment ``<venvs>/<name>`` (made once and kept;
remade when its pins change; one with the same torch requirement as another starts as hard links to that one's
files, saving GBs) with this repository installed editable and torch, numpy and numba pinned:

- ``oldest``: torch, numpy and numba at pyproject.toml's lower bounds (read from the file), the rest as pip resolves;
- ``floor``: every dependency at its lower bound;
- ``newest``: the newest releases pip installs;
- ``old-torch`` / ``new-torch``: the oldest torch with the newest numpy and numba, and the reverse;
- ``this-python``: the interpreter running this script, as it is (nothing installed).

Each environment, in fresh processes: (1) decodes the golden exact files (``tests/golden``: every profile whose
arithmetic is exact) against the stored pixels; (2) encodes ``-n`` CIFAR-10 test images with the default profile
(``ddpm_codec.encode(image)``, as a user would), a different ``-n`` images per encoding environment; (3) decodes every
environment's files (``ddpm_codec.decode(data)``, the model found from the file). Prints a table per part:
bit-exact / wrong pixels / checksum error / another error / failed to import.

Without ``--torch-index``, pip takes torch from its configured index: on Linux x86-64, PyPI's torch is a CUDA build
(several GB with its nvidia-* packages; the decodes here run on the CPU either way). The decodes use one torch thread
(``--threads``) and a numba cache of each environment's own.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
DATA = ROOT.parent / "shared" / "data" / "cifar10-subset.npz"
VERSIONED = ("torch", "numpy", "numba")


# ----------------------------------------------------------------------------- the parent: environments
def lower_bounds(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """Each dependency's ``>=`` bound in pyproject.toml: ``{"torch": "2.1", ...}`` (names lower-cased)."""
    import tomllib

    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(.*)", dep)
        low = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", m.group(2))
        if low:
            out[m.group(1).lower()] = low.group(1)
    return out


def combinations() -> dict[str, dict[str, str]]:
    """name -> {package: pip requirement}; a package not named is left to pip's resolver."""
    low = {name: f"{name}=={v}" for name, v in lower_bounds().items()}
    old = {k: low[k] for k in VERSIONED}
    new = {k: k for k in VERSIONED}   # unpinned, with --upgrade: the newest release pip installs
    return {"oldest": old, "floor": dict(low), "newest": new,
            "old-torch": {**new, "torch": old["torch"]}, "new-torch": {**old, "torch": "torch"},
            "this-python": {}}


def donor_fits(stamp: dict, pins: dict[str, str], torch_index: str | None) -> bool:
    """Whether an environment with that stamp was made with the same torch requirement (an unpinned one is brought
    up to date by ``--upgrade``)."""
    return "torch" in pins and stamp["pins"].get("torch") == pins["torch"] and stamp["torch_index"] == torch_index


def ensure_venv(where: Path, pins: dict[str, str], torch_index: str | None, log) -> Path:
    """The environment's python, made and installed unless its recorded pins already match."""
    py = where / "bin" / "python"
    stamp = where / "ddpm-codec-pins.json"
    want = json.dumps({"pins": pins, "torch_index": torch_index}, sort_keys=True)
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    if where.exists():
        shutil.rmtree(where)
    donor = next((d for d in where.parent.glob("*/ddpm-codec-pins.json") if donor_fits(json.loads(d.read_text()),
                                                                                      pins, torch_index)), None)
    if donor:   # torch (GBs) is already unpacked there: hard links (pip replaces files, never writes into them)
        subprocess.run(["cp", "-al", str(donor.parent), str(where)], check=True)
        (where / stamp.name).unlink()
    else:
        subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    pip = [str(py), "-m", "pip", "install", "--upgrade"]
    if torch_index:   # torch (and what it needs) from that index, alone
        subprocess.run(pip + [pins.get("torch", "torch"), "--index-url", torch_index], check=True, stdout=log,
                       stderr=log)
    subprocess.run(pip + ["-e", str(ROOT), *pins.values()], check=True, stdout=log, stderr=log)
    stamp.write_text(want)
    return py


# ----------------------------------------------------------------------------- the child: runs in an environment
def child(mode: str, args: list[str]) -> dict:
    """``golden OUT FIRST N``: decode the golden exact files, then encode CIFAR-10 test images FIRST.. FIRST+N-1 into
    OUT; ``decode DIR...``: decode every file each DIR holds. Returns the versions and the outcomes."""
    import torch

    torch.set_num_threads(int(os.environ.get("VERSIONS_THREADS", "1")))
    import numba
    import numpy as np

    info = {"torch": torch.__version__, "numpy": np.__version__, "numba": numba.__version__}
    import ddpm_codec as dc
    from ddpm_codec import codec

    def outcome(data: bytes, want_sha: str) -> str:
        try:
            res = dc.decode(data)
        except dc.DecodeError as exc:
            return "checksum error" if "checksum" in str(exc) else f"error: {exc}"
        if not res.lossless or res.truncated:
            return "error: not lossless"
        return "bit-exact" if hashlib.sha256(res.image.tobytes()).hexdigest() == want_sha else "wrong pixels"

    if mode == "golden":
        table = json.loads((GOLDEN / "golden.json").read_text())
        golden = {}
        for pid in (p for p in sorted(codec.PROFILES) if codec.PROFILES[p].arithmetic.exact):
            data = (GOLDEN / f"p{pid}.ddpm").read_bytes()
            assert hashlib.sha256(data).hexdigest() == table[f"p{pid}"], f"tests/golden/p{pid}.ddpm changed"
            golden[str(pid)] = outcome(data, table["pixels_sha256"])
        out, first, n = Path(args[0]), int(args[1]), int(args[2])
        want = {}
        for i, image in enumerate(np.load(DATA)["test_images"][first:first + n], first):
            data = dc.encode(image).data   # the default profile, as a user would
            (out / f"{i}.ddpm").write_bytes(data)
            profile = codec.read_header(data)[0].file.header.profile
            want[f"{i}.ddpm"] = [hashlib.sha256(image.tobytes()).hexdigest(), profile]
        (out / "want.json").write_text(json.dumps(want))
        return {**info, "golden": golden, "profiles": sorted({p for _, p in want.values()})}
    if mode == "decode":
        got = {}
        for d in map(Path, args):
            want = json.loads((d / "want.json").read_text())
            got[d.name] = {name: outcome((d / name).read_bytes(), sha) for name, (sha, _) in want.items()}
        return {**info, "decoded": got}
    raise SystemExit(f"unknown mode {mode}")


def run_child(py: Path, cache: Path, mode: str, *args: str, threads: int = 1) -> dict:
    """One fresh process in that environment; its JSON, or {"error": ...} when it failed to import or crashed."""
    env = {**os.environ, "VERSIONS_THREADS": str(threads), "NUMBA_CACHE_DIR": str(cache)}
    r = subprocess.run([str(py), str(Path(__file__).resolve()), "--child", mode, *args], capture_output=True,
                       text=True, env=env, cwd=tempfile.gettempdir())
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"failed: {last[:200]}"}


def tally(results: dict[str, str]) -> str:
    keys = ("bit-exact", "wrong pixels", "checksum error")
    counts = {k: sum(v == k for v in results.values()) for k in keys}
    other = [v for v in results.values() if v not in keys]
    return " | ".join(str(counts[k]) for k in keys) + f" | {len(other)}" + (f" ({other[0][:80]})" if other else "")


def versions(info: dict) -> str:
    return ", ".join(f"{k} {info[k]}" for k in VERSIONED) if "torch" in info else ""


def main():
    from concurrent.futures import ThreadPoolExecutor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venvs", type=Path, help="the directory for the environments (made if missing)")
    ap.add_argument("--only", nargs="+", help="these combinations only (default: all)")
    ap.add_argument("-n", type=int, default=3, help="CIFAR-10 test images each environment encodes (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each decode and encode (default 1)")
    ap.add_argument("--jobs", type=int, default=1, help="environments run at once (default 1)")
    ap.add_argument("--torch-index", help="a pip index for torch alone, e.g. PyTorch's CPU wheels")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        try:
            print(json.dumps(child(a.child[0], a.child[1:])))
        except ImportError as exc:
            print(json.dumps({"error": f"failed to import: {type(exc).__name__}: {exc}"}))
        return
    if a.venvs is None:
        ap.error("--venvs DIR is required")
    combos = combinations()
    names = a.only or list(combos)
    a.venvs = a.venvs.expanduser().resolve()
    a.venvs.mkdir(parents=True, exist_ok=True)
    pys = {}
    with open(a.venvs / "pip.log", "a") as log:
        for name in names:
            t0 = time.time()
            print(f"[{name}] {' '.join(combos[name].values()) or sys.executable}", file=sys.stderr, flush=True)
            if name == "this-python":
                pys[name] = Path(sys.executable)
                continue
            try:
                pys[name] = ensure_venv(a.venvs / name, combos[name], a.torch_index, log)
                print(f"[{name}] ready in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
            except subprocess.CalledProcessError:
                print(f"[{name}] pip failed (see {a.venvs / 'pip.log'})", file=sys.stderr)
    names = [n for n in names if n in pys]
    cache = {name: a.venvs / "numba-cache" / name for name in names}   # each environment's own numba cache
    files = Path(tempfile.mkdtemp(prefix="versions-"))
    for name in names:
        (files / name).mkdir()

    def golden(k_name):
        k, name = k_name
        got = run_child(pys[name], cache[name], "golden", str(files / name), str(k * a.n), str(a.n), threads=a.threads)
        print(f"[{name}] golden decoded, CIFAR-10 test {k * a.n}..{(k + 1) * a.n - 1} encoded", file=sys.stderr,
              flush=True)
        return got

    with ThreadPoolExecutor(a.jobs) as pool:
        first = dict(zip(names, pool.map(golden, enumerate(names))))
        made = [n for n in names if "golden" in first[n]]
        second = dict(zip(names, pool.map(lambda n: run_child(pys[n], cache[n], "decode",
                                                              *(str(files / e) for e in made), threads=a.threads),
                                          names)))
    shutil.rmtree(files)

    print("## Golden exact files (tests/golden), decoded in each environment\n")
    pids = list(next((first[n]["golden"] for n in made), {"": ""}))
    print("| environment | versions | " + " | ".join(f"profile {p}" for p in pids) + " |\n|---|---|"
          + "---|" * len(pids))
    for name in names:
        got = first[name]
        cells = list(got["golden"].values()) if "golden" in got else [got["error"]] + [""] * (len(pids) - 1)
        print(f"| {name} | {versions(got) or ' '.join(combos[name].values())} | " + " | ".join(cells) + " |")
    print(f"\n## Fresh files ({a.n} CIFAR-10 test images per encoding environment, the default profile "
          f"{', '.join(str(p) for p in sorted({p for n in made for p in first[n]['profiles']}))}), decoded in every "
          f"environment\n")
    print("| encoded in | decoded in | bit-exact | wrong pixels | checksum error | other error |\n"
          "|---|---|---|---|---|---|")
    for enc in made:
        for dec in names:
            res = second[dec]
            row = tally(res["decoded"][enc]) if "decoded" in res else f"| | | {res['error']}"
            print(f"| {enc} | {dec} | {row} |")
    for name in names:
        if "golden" not in first[name]:
            print(f"\n{name}: encode failed ({first[name]['error']})")


if __name__ == "__main__":
    main()
