"""Bits-back archives (issue 27): the ANS stack's integer models against their closed forms, round
trips of image sets (a single image, odd sizes, chunks, one image by name), damaged and truncated
archives losing only their damaged chunks, bad input refused with one line, extraction bit-exact in
subprocesses under other kernels and thread counts, and the CLI."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ddpm_codec.codec import archive as ar
from ddpm_codec.codec.profiles import PROFILES
from ddpm_codec.coding import bitsback
from ddpm_codec.coding.bitsback import LATENT_PRECISION, AnsError, AnsStack, LatentGrid, gaussian_frequencies
from ddpm_codec.errors import InputError
from ddpm_codec.models.checkpoint import add_x0_context, fresh_model, load_model, save_model, with_stats
from ddpm_codec.models.presets import get_preset
from ddpm_codec.models.x0_context import ContextConfig, ContextX0Net
from test_coding_container import ref_crc16   # CRC-16/CCITT-FALSE bit by bit: the textbook definition

MSE = np.concatenate([[0.0], np.geomspace(3e-4, 0.3, 1000)])
SETTINGS = ar.ArchiveSettings(num_steps=4, grid_bits=3, chunk_images=2, seed_images=0)
# the per-image codec for seed images, on a short chain (as tests/test_portable.py): exact arithmetic is what matters
SEED_PROFILE = replace(PROFILES[12], num_steps=6, log2_candidates=8, chunk_bits=2, reuse_bits=0)


# ----------------------------------------------------------------------------- the stack

def _normal_cdf(z):
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(z) / math.sqrt(2.0)))


@pytest.mark.parametrize("floor", [True, False])
def test_gaussian_frequencies_are_the_discretized_gaussian(floor):
    """Over the whole grid the frequencies sum to 2^P; each is the Gaussian's mass of its bin times
    2^P (to the rounding, plus the floor of 1 a bin); without the floor, bins beyond 5.5 std get 0."""
    grid = LatentGrid(2.0 ** -6, 700)
    js = np.arange(-700, 701)
    for mu, sigma in [(0.3, 0.1), (-2.0, 1.0), (9.5, 0.5)]:   # the last: mostly beyond the grid's end
        f = gaussian_frequencies(js, np.full(js.size, mu), sigma, grid, floor=floor)
        assert f.sum() == 1 << LATENT_PRECISION
        lo = _normal_cdf(((js - 0.5) * grid.delta - mu) / sigma)
        hi = _normal_cdf(((js + 0.5) * grid.delta - mu) / sigma)
        lo[0], hi[-1] = 0.0, 1.0                                      # the edge bins take the tails
        free = (1 << LATENT_PRECISION) - (js.size if floor else 0)
        expect = (hi - lo) * free + (1 if floor else 0)
        assert np.all(np.abs(f - expect) <= 1.0 + 3e-8 * free)        # rounding, and the cut at 5.5 std
        assert (f >= 1).all() if floor else (f[np.abs(js * grid.delta - mu) > 5.6 * sigma] == 0).all()


def test_stack_round_trip_and_code_length_is_minus_log2_of_the_frequencies():
    rng = np.random.default_rng(0)
    grid = bitsback.grid_for(0.05, 4, 4.0)
    mus = rng.uniform(-1, 1, 500)
    js = np.round((mus + 0.05 * rng.normal(size=500)) / grid.delta).astype(np.int64)
    cdf = np.zeros((300, 5), np.int64)
    cdf[:, 1:] = np.cumsum(rng.integers(1, 1000, (300, 4)), 1)
    cdf = cdf * (1 << 20) // cdf[:, -1:]
    cdf[:, 1:-1] = np.maximum(cdf[:, 1:-1], np.arange(1, 4))          # every symbol possible
    cdf[:, -1] = 1 << 20
    syms = rng.integers(0, 4, 300)
    st = AnsStack(seed=7)
    st.push_gaussian(js, mus, 0.05, grid, key=1)
    st.push_table(syms, cdf, 20, key=2)
    ideal = float(np.sum(LATENT_PRECISION - np.log2(gaussian_frequencies(js, mus, 0.05, grid))))
    ideal += float(np.sum(20 - np.log2(cdf[np.arange(300), syms + 1] - cdf[np.arange(300), syms])))
    assert st.virtual_used == 0
    assert ideal - 64 <= st.num_bits() - 64 <= ideal + 32 + 64 + 8   # the initial head's ~53 bits count too
    dec = AnsStack.from_bytes(st.to_bytes(), seed=7)
    assert np.array_equal(dec.pop_table(cdf, 20, key=2), syms)
    assert np.array_equal(dec.pop_gaussian(mus, 0.05, grid, key=1), js)
    assert dec.is_initial() and dec.n == 0


def test_pops_sample_the_model_also_right_after_pushes():
    """Bits back: a pop draws from its model (z-scores ~N(0, 1)), from virtual words and from data just
    pushed under another model alike (the whitening keys); the decoder undoes it all."""
    rng = np.random.default_rng(1)
    g = bitsback.grid_for(0.1, 4, 8.0)
    st = AnsStack(seed=3)
    history = []
    for r in range(4):
        mu = rng.uniform(-1, 1, 3000)
        j = st.pop_gaussian(mu, 0.1, g, floor=False, key=2 * r)
        z = (g.values(j) - mu) / 0.1
        assert abs(z.mean()) < 0.08 and abs(z.std() - 1) < 0.05 and np.abs(z).max() < 5.6
        mu_p = mu + 0.05 * rng.normal(size=3000)
        st.push_gaussian(j, mu_p, 0.15, g, key=2 * r + 1)
        history.append((mu, mu_p, j))
    assert st.virtual_used > 0
    dec = AnsStack.from_bytes(st.to_bytes(), seed=3)
    for r in range(3, -1, -1):
        mu, mu_p, j = history[r]
        assert np.array_equal(dec.pop_gaussian(mu_p, 0.15, g, key=2 * r + 1), j)
        dec.push_gaussian(j, mu, 0.1, g, floor=False, key=2 * r)
    assert dec.is_initial()
    assert not AnsStack.from_bytes(st.to_bytes(), seed=4).is_initial()


def test_stack_refuses_what_it_cannot_code():
    g = LatentGrid(0.25, 8)
    st = AnsStack()
    with pytest.raises(AnsError):
        st.push_gaussian([9], [0.0], 1.0, g)                         # outside the grid
    with pytest.raises(AnsError):
        st.push_gaussian([8], [0.0], 0.1, g, floor=False)            # 80 std away: no probability
    with pytest.raises(AnsError):
        st.push_gaussian([0], [float("nan")], 1.0, g)
    with pytest.raises(ValueError):
        LatentGrid(0.3, 8)                                            # not a power of two
    with pytest.raises(AnsError):
        AnsStack.from_bytes(b"\x00" * 9)


_FMA_CHILD = """
import json, re
import numpy as np
from ddpm_codec.coding import bitsback as B
st = B.AnsStack(); g = B.grid_for(0.1, 3, 2.0)
j = st.pop_gaussian(np.zeros(4), 0.1, g); st.push_gaussian(j, np.zeros(4), 0.1, g)
B.gaussian_frequencies(j, np.zeros(4), 0.1, g)
out = {}
for name in ("_push_gaussian", "_pop_gaussian", "_gaussian_freqs"):
    asm = "".join(getattr(B, name).inspect_asm().values())
    out[name] = [len(re.findall(r"\\bv?mulsd|\\bv?divsd", asm)), len(re.findall(r"\\bv?f(n)?m(add|sub)", asm))]
print(json.dumps(out))
"""


@pytest.mark.subprocess
@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"), reason="x86 machine code")
def test_compiled_models_contain_no_fused_multiply_add(tmp_path):
    """The latents' CDF (z, Q's Horner steps) must round as written: no FMA in the machine code."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    p = subprocess.run([sys.executable, "-c", _FMA_CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    for name, (arith, fma) in json.loads(p.stdout.strip().splitlines()[-1]).items():
        assert arith > 0 and fma == 0, name


# ----------------------------------------------------------------------------- archives

def _images(n: int, seed: int = 0, h: int = 32, w: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = np.kron(rng.normal(size=(4, 4, 3)), np.ones((h // 4 + 1, w // 4 + 1, 1)))[:h, :w]
        out.append(np.clip(128 + 50 * low + rng.normal(scale=6, size=(h, w, 3)), 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny DDPM with fitted statistics and a small random context model for tau 1, saved."""
    torch.manual_seed(0)
    m = with_stats(fresh_model(get_preset("tiny")), MSE)
    scale = float(m.diffusion.decoder_scale(1, "fitted", torch.zeros(1)))
    net = ContextX0Net(ContextConfig(channels=8, blocks=1, scale=scale, tau=1))
    with torch.no_grad():
        net.out.weight.normal_(0.0, 0.05)
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    save_model(path, m.net, m.config)
    add_x0_context(path, net)
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return load_model(model_path)


@pytest.fixture(scope="module")
def made(model):
    items = [("a.png", _images(1, 1)[0]), ("odd/b.png", _images(1, 2, 33, 17)[0]), ("c", _images(1, 3, 8, 40)[0])]
    return items, ar.archive(items, model, settings=SETTINGS, measure=True)


def test_archive_round_trip_keeps_names_sizes_and_pixels(made, model):
    items, res = made
    idx = ar.read_index(res.data)
    assert [e.name for e in idx.images] == [n for n, _ in items] and len(idx.chunks) == 2
    assert [(e.height, e.width) for e in idx.images] == [im.shape[:2] for _, im in items]
    out = ar.extract(res.data, model)
    assert not out.damaged and [n for n, _ in out.images] == [n for n, _ in items]
    for (_, got), (_, want) in zip(out.images, items):
        assert np.array_equal(got, want)
    only = ar.extract(res.data, model, only=["odd/b.png"])
    assert [n for n, _ in only.images] == ["odd/b.png"] and np.array_equal(only.images[0][1], items[1][1])


def test_code_length_is_the_pushed_minus_the_popped_bits(made):
    """Each image after a chunk's first adds to the stack what its integer models say: the bits it
    pushed minus the bits it popped (to the stack's word and the head's few bits)."""
    _, res = made
    s = res.stats[1]                       # the second image of chunk 0: no virtual words
    assert s.virtual_bits == 0 and res.stats[0].virtual_bits > 0
    assert abs(s.stack_bits - (s.push_bits - s.pop_bits)) < 100 + 0.002 * s.push_bits
    assert s.x0_bits > 0 and s.kl_bits > 0


def test_single_image_archive(model):
    img = _images(1, 5, 9, 13)[0]
    res = ar.archive([("only", img)], model, settings=SETTINGS)
    out = ar.extract(res.data, model)
    assert out.images[0][0] == "only" and np.array_equal(out.images[0][1], img)


def test_seed_images_give_the_next_images_their_initial_bits(made, model):
    """A chunk's first image as a per-image file at the stack's bottom: the next image pops it instead of
    virtual words (fewer initial bits), and every image, the seed one too, extracts exactly."""
    items, plain = made
    settings = ar.ArchiveSettings(num_steps=4, grid_bits=3, chunk_images=3, seed_images=1)
    res = ar.archive(items, model, settings=settings, seed_profile=SEED_PROFILE)
    idx = ar.read_index(res.data)
    assert len(idx.chunks) == 1 and len(idx.chunks[0].seed_files) == 1
    assert res.stats[0].stack_bits == 8 * idx.chunks[0].seed_files[0]
    assert res.stats[1].virtual_bits <= max(0.0, plain.stats[0].virtual_bits - 8 * idx.chunks[0].seed_files[0]) + 64
    out = ar.extract(res.data, model)
    assert not out.damaged and all(np.array_equal(g, w) for (_, g), (_, w) in zip(out.images, items))
    one = ar.extract(res.data, model, only=["a.png"])
    assert np.array_equal(one.images[0][1], items[0][1])
    with pytest.raises(InputError, match="exact"):
        ar.archive(items, model, settings=settings, seed_profile=PROFILES[11])


def _recrc_chunk(data: bytes, idx: ar.ArchiveIndex, c: int, payload: bytes) -> bytes:
    """The archive with chunk ``c``'s payload replaced (same length) and its CRC repaired in the index."""
    import dataclasses

    ch = idx.chunks[c]
    data = data[:ch.offset] + payload + data[ch.offset + ch.length:]
    entries = [dataclasses.replace(e) for e in idx.images]
    chunks = [ar.PackedChunk(x.seed_files, data[x.offset:x.offset + x.length], x.pixels_crc) for x in idx.chunks]
    index = ar._pack_index(idx.fingerprint, idx.settings, idx.t_end, entries, chunks)
    return index + b"".join(x.payload for x in chunks)


def test_damaged_and_truncated_archives_lose_only_their_chunks(made, model):
    items, res = made
    idx = ar.read_index(res.data)
    bad = bytearray(res.data)
    bad[idx.chunks[0].offset + 20] ^= 0x10
    out = ar.extract(bytes(bad), model)
    assert [d.chunk for d in out.damaged] == [0] and "checksum" in out.damaged[0].reason
    assert out.damaged[0].names == ["a.png", "odd/b.png"]
    assert [n for n, _ in out.images] == ["c"] and np.array_equal(out.images[0][1], items[2][1])
    cut = ar.extract(res.data[:-3], model)                         # truncated inside the last chunk
    assert [d.chunk for d in cut.damaged] == [1] and "truncated" in cut.damaged[0].reason
    assert len(cut.images) == 2 and np.array_equal(cut.images[1][1], items[1][1])


def test_fuzzed_chunks_reach_the_decoder_and_never_give_wrong_pixels(made, model):
    """Payload bytes changed with the chunk's CRC repaired: the decoder itself must notice (pixel CRCs,
    the stack's final state) and report the chunk, never return a wrong image."""
    items, res = made
    idx = ar.read_index(res.data)
    rng = np.random.default_rng(0)
    ch = idx.chunks[1]                                             # the one-image chunk: cheap to decode
    for _ in range(3):
        payload = bytearray(res.data[ch.offset:ch.offset + ch.length])
        pos = int(rng.integers(0, len(payload)))
        payload[pos] ^= 1 << int(rng.integers(0, 8))
        data = _recrc_chunk(res.data, idx, 1, bytes(payload))
        out = ar.extract(data, model, only=["c"])
        assert [d.chunk for d in out.damaged] == [1] and out.images == []


def test_version_2_index_front_codes_names_and_stores_short_checks(made):
    """Names as (shared prefix, rest) by hand; the per-image check is the CRC-16 of the pixels, the
    chunk's the CRC-32 of its images' pixels in order; all of it reads back, and an index of 500
    dataset names costs about its 2-byte checks."""
    items, res = made
    assert ar._front_code(["set/0001", "set/0002", "set/01", "é/x", "é/y"]) == (
        b"\x00\x08set/0001" + b"\x07\x012" + b"\x05\x011" + b"\x00\x04\xc3\xa9/x" + b"\x03\x01y")
    idx = ar.read_index(res.data)
    assert idx.version == ar.VERSION == 2
    for e, (_, img) in zip(idx.images, items):
        assert e.check == ref_crc16(img.tobytes()) == ar.image_check(img)
    assert idx.chunks[0].pixels_crc == zlib.crc32(items[0][1].tobytes() + items[1][1].tobytes())
    names = ["x", "xy", "x", "é", "éa/b", "z" * 4096, "z" * 4095 + "y"]
    entries = [ar.ImageEntry(n, 1 + i, 2 + i, 0xBEEF - i) for i, n in enumerate(names)]
    packed = ar.PackedChunk([], b"\0" * 8, 7)
    got = ar.read_index(ar._pack_index(b"abcd", SETTINGS, 1, entries, [packed] * 4))
    assert [(e.name, e.height, e.width, e.check) for e in got.images] == [
        (e.name, e.height, e.width, e.check) for e in entries]
    many = [ar.ImageEntry(f"test/{i:05d}", 32, 32, (i * 40503) & 0xFFFF) for i in range(500)]
    settings = ar.ArchiveSettings()
    index = ar._pack_index(b"abcd", settings, 1, many, [ar.PackedChunk([9] * 3, b"\0" * 8, i) for i in range(5)])
    assert len(index) < 2 * 500 + 250            # version 1: 3,601 bytes for the 500 test images


def test_a_whole_chunk_is_checked_by_its_pixel_crc(made, model):
    """A chunk whose pixel CRC-32 does not match loses its images when extracted whole; extracting
    only its last image (a part of the chunk) checks that image's CRC-16 instead."""
    import dataclasses

    items, res = made
    idx = ar.read_index(res.data)
    chunks = [ar.PackedChunk(x.seed_files, res.data[x.offset:x.offset + x.length],
                             x.pixels_crc ^ (1 if c == 0 else 0)) for c, x in enumerate(idx.chunks)]
    data = ar._pack_index(idx.fingerprint, idx.settings, idx.t_end, [dataclasses.replace(e) for e in idx.images],
                          chunks) + b"".join(x.payload for x in chunks)
    out = ar.extract(data, model)
    assert [d.chunk for d in out.damaged] == [0] and "chunk's checksum" in out.damaged[0].reason
    assert [n for n, _ in out.images] == ["c"]
    part = ar.extract(data, model, only=["odd/b.png"])
    assert not part.damaged and np.array_equal(part.images[0][1], items[1][1])


def test_bad_archives_and_inputs_are_refused_with_one_line(made, model, tmp_path):
    items, res = made
    with pytest.raises(ar.ArchiveError, match="magic"):
        ar.read_index(b"PNG\x00" + res.data[4:])
    with pytest.raises(ar.ArchiveError, match="version"):
        ar.read_index(res.data[:4] + b"\x09" + res.data[5:])
    with pytest.raises(ar.ArchiveError, match="checksum"):
        ar.read_index(res.data[:12] + bytes([res.data[12] ^ 1]) + res.data[13:])
    with pytest.raises(ar.ArchiveError, match="truncated"):
        ar.read_index(res.data[:10])
    other = with_stats(fresh_model(get_preset("tiny")), MSE)
    with pytest.raises(ar.ArchiveError, match="model"):
        ar.extract(res.data, other)
    with pytest.raises(InputError, match="no image named"):
        ar.extract(res.data, model, only=["nope"])
    with pytest.raises(InputError, match="named"):
        ar.archive([("x", items[0][1]), ("x", items[0][1])], model, settings=SETTINGS)
    with pytest.raises(InputError, match="relative path"):
        ar.archive([("../x", items[0][1])], model, settings=SETTINGS)
    with pytest.raises(InputError, match="context model"):
        ar.archive([("x", items[0][1])], other, settings=SETTINGS)
    with pytest.raises(InputError):
        ar.ArchiveSettings(grid_bits=11)


EXTRACTOR = r"""
import hashlib, json, os, sys
import torch
torch.set_num_threads(int(os.environ["THREADS"]))
from ddpm_codec.codec import archive as ar
from ddpm_codec.models.checkpoint import load_model
out = ar.extract(open(sys.argv[1], "rb").read(), load_model(sys.argv[2]))
print(json.dumps({n: hashlib.sha256(im.tobytes()).hexdigest() for n, im in out.images}))
"""
VARIANTS = {
    "portable kernels, 1 thread": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "THREADS": "1"},
    "oneDNN SSE4.1, 2 threads": {"ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "2", "THREADS": "2"},
}


@pytest.mark.slow
@pytest.mark.subprocess
def test_archives_extract_bit_exactly_under_other_kernels_and_thread_counts(made, model_path, tmp_path):
    items, res = made
    path = tmp_path / "set.ddpma"
    path.write_bytes(res.data)
    want = {n: hashlib.sha256(im.tobytes()).hexdigest() for n, im in items}
    for name, env in VARIANTS.items():
        r = subprocess.run([sys.executable, "-c", EXTRACTOR, str(path), str(model_path)], capture_output=True,
                           text=True, timeout=600, env={**os.environ, **env})
        assert r.returncode == 0, (name, r.stderr[-2000:])
        assert json.loads(r.stdout.strip().splitlines()[-1]) == want, name


def test_cli_archive_list_extract(model_path, tmp_path):
    from PIL import Image

    from ddpm_codec.cli.main import main

    src = tmp_path / "in"
    src.mkdir()
    imgs = _images(2, 9, 12, 20)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(src / f"p{i}.png")
    runner = CliRunner()
    out = tmp_path / "set.ddpma"
    r = runner.invoke(main, ["archive", str(src), "-o", str(out), "--model", str(model_path), "--steps", "3",
                             "--grid-bits", "2", "--seed-images", "0"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["extract", str(out), "--list"])
    assert r.exit_code == 0 and "p0.png\t20x12\tchunk 0" in r.output and "format version 2" in r.output
    r = runner.invoke(main, ["extract", str(out), "-o", str(tmp_path / "x"), "--model", str(model_path),
                             "--only", "p1.png"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["p1.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x" / "p1.png")), imgs[1])
    bad = tmp_path / "bad.ddpma"
    bad.write_bytes(b"not an archive")
    r = runner.invoke(main, ["extract", str(bad), "-o", str(tmp_path / "y")])
    assert r.exit_code == 1 and "magic" in r.output and not (tmp_path / "y").exists()
    r = runner.invoke(main, ["archive", str(src / "missing.png"), "-o", str(tmp_path / "z.ddpma")])
    assert r.exit_code == 1 and not (tmp_path / "z.ddpma").exists()


def test_collect_images_names_files_folders_and_npz_arrays(tmp_path):
    from PIL import Image

    imgs = _images(3, 11, 5, 6)
    np.savez(tmp_path / "set.npz", test_images=np.stack(imgs))
    (tmp_path / "d" / "sub").mkdir(parents=True)
    Image.fromarray(imgs[0]).save(tmp_path / "d" / "sub" / "x.png")
    Image.fromarray(imgs[1]).save(tmp_path / "y.png")
    got = ar.collect_images([tmp_path / "set.npz", tmp_path / "d", tmp_path / "y.png"])
    assert [n for n, _ in got] == ["set/0", "set/1", "set/2", "sub/x.png", "y.png"]
    assert all(np.array_equal(a, b) for (_, a), b in zip(got, imgs + imgs[:2]))
    assert ar.output_name("set/0") == "set/0.png" and ar.output_name("sub/x.jpg") == "sub/x.png"
    with pytest.raises(InputError, match="no images"):
        (tmp_path / "empty").mkdir()
        ar.collect_images([tmp_path / "empty"])
