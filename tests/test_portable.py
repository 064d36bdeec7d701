"""Exact-arithmetic files decode bit-exactly whatever kernels and thread count the decoder's machine uses.

A file is encoded here (exact profile 10, and profile 9 for contrast where it matters) and decoded in
fresh subprocesses under PyTorch's portable kernels (``ATEN_CPU_CAPABILITY=default``, what a CPU
without AVX2 gets), oneDNN limited to SSE4.1 (``ONEDNN_MAX_CPU_ISA=SSE41``), and 1 and 2 threads.
The shipped model's golden exact file (tests/golden) is decoded there too."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_codec import codec
from ddpm_codec.models.checkpoint import fresh_model, save_model, with_stats
from ddpm_codec.models.presets import get_preset

GOLDEN = Path(__file__).resolve().parent / "golden"
# one tiny chain: a few steps keep the subprocesses short; exact arithmetic is what is tested
EXACT = replace(codec.PROFILES[10], num_steps=6, t_end=2, log2_candidates=8, chunk_bits=2, reuse_bits=0)
VARIANTS = {   # every condition of the issue, two subprocesses
    "portable kernels, 1 thread": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "THREADS": "1"},
    "oneDNN SSE4.1, 2 threads": {"ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "2", "THREADS": "2"},
}
DECODER = r"""
import hashlib, json, os, sys
import torch
torch.set_num_threads(int(os.environ["THREADS"]))
from ddpm_codec import codec
from ddpm_codec.models.registry import resolve_model
out = {}
for path, model_path in json.loads(sys.argv[1]):
    model = resolve_model(model_path)
    try:
        res = codec.decode(open(path, "rb").read(), model)
        out[path] = ("" if res.lossless else "lossy ") + hashlib.sha256(res.image.tobytes()).hexdigest()
    except codec.DecodeError as e:
        out[path] = "error: " + str(e)[:60]
print(json.dumps(out))
"""


def _image(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (1, 1, 3))
    yy, xx = np.mgrid[0:20, 0:28]
    return np.clip(base + 2 * yy[..., None] - xx[..., None] + rng.integers(-6, 7, (20, 28, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    m = with_stats(fresh_model(get_preset("tiny")), np.concatenate([[0.0], np.geomspace(3e-4, 0.3, 1000)]))
    path = save_model(tmp_path_factory.mktemp("m") / "m.safetensors", m.net, m.config)
    return m, path


def test_exact_profile_round_trips_and_names_itself(small):
    model, _ = small
    img = _image()
    res = codec.encode(img, model, settings=EXACT)
    parsed, settings = codec.read_header(res.data)
    assert settings == EXACT and settings.exact == 1 and parsed.file.header.schedule.variance_kind & 0x10
    dec = codec.decode(res.data, model)
    assert dec.lossless and np.array_equal(dec.image, img)
    assert model._exact is not None   # the chain ran the exact network (built on first use)


@pytest.mark.slow
@pytest.mark.subprocess
def test_exact_files_decode_under_other_kernels_and_thread_counts(small, tmp_path):
    model, mpath = small
    img = _image(5)
    exact_file = tmp_path / "exact.ddpm"
    exact_file.write_bytes(codec.encode(img, model, settings=EXACT).data)
    # the exact x_0 context model too (profile 12's x_0 stage): the small model with a random one attached
    from ddpm_codec.models.checkpoint import add_x0_context, load_model
    from ddpm_codec.models.x0_context import ContextConfig, ContextX0Net

    torch.manual_seed(4)
    net = ContextX0Net(ContextConfig(channels=8, blocks=1, scale=0.02, tau=EXACT.t_end))
    with torch.no_grad():
        net.out.weight.normal_(0.0, 0.05)
    cpath = tmp_path / "with-context.safetensors"
    save_model(cpath, model.net, model.config)
    add_x0_context(cpath, net)
    context_file = tmp_path / "context.ddpm"
    context_file.write_bytes(codec.encode(img, load_model(cpath), settings=replace(
        EXACT, x0_context=1, x0_scale_bits=0, x0_channel_bits=0, x0_neighbours=0)).data)
    # a lossy file that stops between two schedule times (format 5: one step straight to the stop): its picture
    ts = list(EXACT.timesteps(model.diffusion.num_timesteps))
    stop_file = tmp_path / "stop.ddpm"
    t_stop = (ts[2] + ts[3]) // 2
    res = codec.encode(img, model, settings=EXACT, max_reverse_time=model.diffusion.num_timesteps - t_stop + 1)
    assert codec.read_header(res.data)[0].file.header.stop == t_stop
    stop_file.write_bytes(res.data)
    stop_hash = "lossy " + hashlib.sha256(codec.decode(res.data, model).image.tobytes()).hexdigest()
    table = json.loads((GOLDEN / "golden.json").read_text())
    golden = table["pixels_sha256"]
    # the golden files of the default profile in format 5 (lossless, and --steps 900 with its stop)
    v5, v5_900 = str(GOLDEN / "p13-format5.ddpm"), str(GOLDEN / "p13-format5-900.ddpm")
    jobs = [(str(exact_file), str(mpath)), (str(context_file), str(cpath)), (str(GOLDEN / "p10.ddpm"), None),
            (str(GOLDEN / "p12.ddpm"), None), (str(GOLDEN / "p13.ddpm"), None), (str(stop_file), str(mpath)),
            (v5, None), (v5_900, None)]
    want = {str(stop_file): stop_hash, str(exact_file): hashlib.sha256(img.tobytes()).hexdigest(),
            str(context_file): hashlib.sha256(img.tobytes()).hexdigest(),
            str(GOLDEN / "p10.ddpm"): golden, str(GOLDEN / "p12.ddpm"): golden, str(GOLDEN / "p13.ddpm"): golden,
            v5: golden, v5_900: "lossy " + table["p13-format5-900-pixels"]}
    for name, env in VARIANTS.items():
        r = subprocess.run([sys.executable, "-c", DECODER, json.dumps(jobs)], capture_output=True, text=True,
                           timeout=600, env={**os.environ, **env})
        assert r.returncode == 0, (name, r.stderr[-2000:])
        assert json.loads(r.stdout.strip().splitlines()[-1]) == want, name


def test_exact_tiles_go_through_the_network_in_any_pieces(small, monkeypatch):
    """Exact outputs do not depend on the batch, so the codec sends tiles through the exact network in
    pieces (bounded memory): a file encoded in one piece decodes with pieces of 2 tiles."""
    from ddpm_codec.codec import chain

    model, _ = small
    ex = model.exact_net()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 32, 32, generator=g)
    with torch.no_grad():   # a non-trivial net: the fresh model's last conv is zero
        w = torch.randn(ex.conv_out.w_int.shape, generator=g, dtype=torch.float64).mul_(50).round_()
    monkeypatch.setattr(ex.conv_out, "w_int", w)
    whole = ex(x, 40)
    assert whole.abs().max() > 0
    assert torch.equal(whole, torch.cat([ex(x[:2], 40), ex(x[2:3], 40), ex(x[3:], 40)]))
    monkeypatch.undo()
    img = np.tile(_image(7), (1, 3, 1))[:, :70]   # 20x70: 3 tiles
    data = codec.encode(img, model, settings=EXACT).data
    monkeypatch.setattr(chain, "TILES_PER_CALL", 2)
    dec = codec.decode(data, model)
    assert dec.lossless and np.array_equal(dec.image, img)
