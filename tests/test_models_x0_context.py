"""The x_0 context model (models/x0_context.py, issue 16): its pass order, its loss, its Eq. 13
starting point, and the exact path (close to float, same bits under other kernels and threads)."""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ddpm_codec.models.x0_context import (
    NUM_PASSES,
    ContextConfig,
    ContextX0Net,
    ExactContextX0,
    code_length_bits,
    discretized_gaussian_bits,
    load_weights,
    pass_masks,
    save_weights,
)

SCALE = 0.008   # Eq. 13's scale in [-1, 1] units (about the shipped model's at tau = 1)


def seeded_net(zero_out: bool = False) -> ContextX0Net:
    """Weights from numpy's default_rng(0), rounded to fp16 (not torch's initialisers)."""
    net = ContextX0Net(ContextConfig(channels=16, blocks=2, scale=SCALE)).eval()
    g = np.random.default_rng(0)
    state = {}
    for name, p in sorted(net.state_dict().items()):
        fan_in = int(np.prod(p.shape[1:])) if p.dim() > 1 else 1
        v = 0.05 * g.standard_normal(p.shape) if name.endswith("bias") else g.standard_normal(p.shape) / math.sqrt(fan_in)
        if zero_out and name.startswith("out."):
            v = np.zeros(p.shape)
        state[name] = torch.from_numpy(v.astype(np.float16).astype(np.float32))
    net.load_state_dict(state)
    return net


def seeded_inputs(b: int = 2, h: int = 12, w: int = 10):
    g = np.random.default_rng(1)
    pix = torch.from_numpy(g.integers(0, 256, (b, 3, h, w), dtype=np.uint8))
    x0 = pix.double() / 127.5 - 1
    xt = x0 * math.sqrt(1 - 1e-4) + 0.01 * torch.from_numpy(g.standard_normal(x0.shape))
    xhat = x0 + 0.006 * torch.from_numpy(g.standard_normal(x0.shape))
    return pix, xt, xhat


def test_pass_masks_against_enumeration():
    """Each subpixel is coded in exactly one pass, and pass q knows exactly what passes 0..q-1 coded
    (enumerated by hand from the order (0,0), (1,1), (0,1), (1,0); R, G, B within each)."""
    h, w = 5, 3   # odd sizes: partial 2x2 cells
    order = [(0, 0), (1, 1), (0, 1), (1, 0)]
    coded = np.zeros((3, h, w), bool)
    for q in range(NUM_PASSES):
        known, target = pass_masks(q, h, w)
        assert np.array_equal(known[0].numpy(), coded)
        want = np.zeros((3, h, w), bool)
        py, px = order[q // 3]
        want[q % 3, py::2, px::2] = True
        assert np.array_equal(target[0].numpy(), want)
        assert not (coded & want).any()
        coded |= want
    assert coded.all()
    k, t = pass_masks(torch.tensor([0, 11]), h, w)
    assert k.shape == (2, 3, h, w) and not k[0].any() and t[1].sum() == (h // 2) * ((w + 1) // 2)


def test_discretized_gaussian_bits_closed_forms():
    v = torch.arange(256)
    for mean, scale in ((0.3, 0.7), (127.2, 3.0), (254.9, 1.5), (-3.0, 2.0)):
        bits = discretized_gaussian_bits(v, torch.full((256,), mean, dtype=torch.float64), torch.full((256,), scale,
                                                                                                      dtype=torch.float64))
        assert abs(float(torch.exp2(-bits).sum()) - 1.0) < 1e-9
    # an interior value: P = Phi(0.5/s) - Phi(-0.5/s) = erf(0.5 / (s sqrt 2))
    b = discretized_gaussian_bits(torch.tensor([100]), torch.tensor([100.0], dtype=torch.float64),
                                  torch.tensor([2.0], dtype=torch.float64))
    assert abs(float(b) + math.log2(math.erf(0.25 / math.sqrt(2)))) < 1e-12


def test_zero_output_layer_is_eq13():
    """Before training (a zero output layer) both paths give Eq. 13: mean (x_hat_0 + 1)·127.5, scale
    SCALE·127.5 — the exact one to the last bit."""
    pix, xt, xhat = seeded_inputs()
    net = seeded_net(zero_out=True)
    known, target = pass_masks(torch.tensor([4, 9]), 12, 10)
    with torch.no_grad():
        mean, scale = net(pix, xt.float(), xhat.float(), known, target)
    assert torch.allclose(mean.double(), (xhat.float().double() + 1) * 127.5, atol=1e-4)
    assert torch.allclose(scale, torch.full_like(scale, SCALE * 127.5))
    em, es = ExactContextX0(net)(pix, xt, xhat, known, target)
    assert torch.equal(em, (xhat + 1.0) * 127.5) and torch.equal(es, torch.full_like(es, SCALE * 127.5))


@pytest.fixture(scope="module")
def nets():
    net = seeded_net()
    return net, ExactContextX0(net)


def test_exact_close_to_float(nets):
    net, ex = nets
    pix, xt, xhat = seeded_inputs()
    for q in (0, 5, 11):
        known, target = pass_masks(torch.full((2,), q), 12, 10)
        with torch.no_grad():
            fm, fs = net(pix, xt.float(), xhat.float(), known, target)
        em, es = ex(pix, xt, xhat, known, target)
        assert (fm.double() - (xhat.float().double() + 1) * 127.5).abs().max() > 0.1   # not Eq. 13: a real net
        assert (em - fm.double()).abs().max() < 2e-3 and ((es / fs.double()) - 1).abs().max() < 1e-4
    with torch.no_grad():
        fb = code_length_bits(net, pix, xt.float(), xhat.float())
    eb = code_length_bits(ex, pix, xt, xhat)
    assert (fb - eb).abs().max() < 0.05


def digest(ex: ExactContextX0) -> str:
    pix, xt, xhat = seeded_inputs()
    h = hashlib.sha256()
    for q in range(NUM_PASSES):
        known, target = pass_masks(torch.full((2,), q), 12, 10)
        for t in ex(pix, xt, xhat, known, target):
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def _child_digest() -> str:                 # what the subprocesses run
    return digest(ExactContextX0(seeded_net()))


@pytest.mark.slow
@pytest.mark.subprocess
def test_exact_same_bits_under_other_isa_and_threads(nets):
    mine = digest(nets[1])
    code = ("import importlib.util, sys, torch; torch.set_num_threads(int(sys.argv[1])); "
            f"s = importlib.util.spec_from_file_location('tmx', {str(Path(__file__))!r}); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print(m._child_digest())")
    runs = [({"ATEN_CPU_CAPABILITY": "default"}, 1), ({"ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "2"}, 2)]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(th)], env=dict(os.environ, **extra),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for extra, th in runs]
    for p, (extra, _) in zip(procs, runs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        assert out.strip() == mine, extra
    assert mine == GOLDEN   # pinned: a change here changes every context-coded file


GOLDEN = "f9ce285c6bdb9f132a126aa2aa70638ee3a5571165ab1aa49dbbb1a4365d4684"


def test_weights_round_trip(tmp_path):
    """fp16 on disk: the loaded net holds exactly the fp16 values (these seeded ones already are)."""
    net = seeded_net()
    save_weights(net, tmp_path / "ctx.safetensors")
    back = load_weights(tmp_path / "ctx.safetensors")
    assert back.config == net.config
    for (k, a), (_, b) in zip(sorted(net.state_dict().items()), sorted(back.state_dict().items())):
        assert torch.equal(a, b), k
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))   # a safetensors file, not ours
    with pytest.raises(ValueError, match="not an x_0 context model"):
        load_weights(tmp_path / "other.safetensors")


def test_pass_by_pass_coder_round_trips_partial_tiles(nets):
    """The codec's x_0 stage under the context model (codec/x0.py): exact pixels back for tiles with
    pixels outside the image, and a code length within a few bytes of the model's ideal one."""
    import constriction

    from ddpm_codec.codec.x0 import read_pixels_context, write_pixels_context

    _, ex = nets
    pix, xt, xhat = seeded_inputs(2, 12, 10)
    mask = np.ones(pix.shape, bool)
    mask[1, :, 9:, :] = False          # tile 1: its last 3 rows are outside the image
    mask[1, :, :, 7:] = False
    pix = pix * torch.from_numpy(mask)
    enc = constriction.stream.queue.RangeEncoder()
    write_pixels_context(enc, ex, pix.numpy(), xt, xhat, mask)
    data = enc.get_compressed()
    back = read_pixels_context(constriction.stream.queue.RangeDecoder(data), ex, xt, xhat, mask)
    assert np.array_equal(back, pix.numpy())
    # ideal: every inside subpixel under its pass's model, the outside ones neither coded nor known
    ideal = 0.0
    inside = torch.from_numpy(mask)
    done = torch.zeros_like(pix)
    for q in range(NUM_PASSES):
        known, target = pass_masks(q, 12, 10)
        known, target = known.expand(2, -1, -1, -1) & inside, target.expand(2, -1, -1, -1) & inside
        mean, scale = ex(done, xt, xhat, known, target)
        ideal += float((discretized_gaussian_bits(pix, mean, scale) * target).sum())
        done[target] = pix[target]
    assert abs(32 * len(data) - ideal) <= 64 + 0.002 * ideal   # words of 32 bits; integer frequencies
