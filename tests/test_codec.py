"""The codec end to end on a tiny model: exact lossless round trips, progressive decoding,
truncation, model/ checksum mismatches, tiling, and the CLI in separate processes."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from ddpm_codec import codec
from ddpm_codec.codec import chain, stream, x0
from ddpm_codec.coding import container
from ddpm_codec.models.checkpoint import fresh_model, save_model, with_stats
from ddpm_codec.models.presets import get_preset

SETTINGS = codec.settings_with(2, num_steps=12, t_end=2, chunk_bits=6, log2_candidates=8)


def smooth_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Made-up natural-ish images: low-pass random fields plus a little pixel noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.normal(size=(4, 4, 3))
        up = np.kron(low, np.ones((size // 4, size // 4, 1)))
        img = 128 + 50 * up + rng.normal(scale=6, size=(size, size, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = fresh_model(get_preset("tiny"))
    # stand-in statistics: x_hat_0 error grows with t (what a trained model's calibration gives)
    mse = np.concatenate([[0.0], np.geomspace(3e-4, 0.3, 1000)])
    return with_stats(m, mse)


ARITHMETICS = pytest.mark.parametrize("exact", [0, 1], ids=["float", "exact"])   # one code path, two arithmetics


@ARITHMETICS
def test_lossless_round_trip_is_bit_exact(model, exact):
    settings = replace(SETTINGS, exact=exact)
    assert settings.arithmetic.exact == bool(exact)
    for img in smooth_images(2):
        res = codec.encode(img, model, settings=settings)
        assert res.lossless
        dec = codec.decode(res.data, model)
        assert dec.lossless and np.array_equal(dec.image, img)
        # the report's cumulative actual rate is the file's, and the file is what we hold
        assert res.bits_per_dim == pytest.approx(8 * len(res.data) / img.size)


def test_odd_sized_image_is_tiled_and_restored(model):
    img = smooth_images(1, size=48)[0][:37, :45]
    res = codec.encode(img, model, settings=SETTINGS)
    dec = codec.decode(res.data, model)
    assert dec.image.shape == img.shape and np.array_equal(dec.image, img)


def test_tiles_round_trip_geometry():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(37, 70, 3), dtype=np.uint8)
    tiles = codec.to_tiles(img, 16)
    assert tiles.shape == (3 * 5, 3, 16, 16)
    back = ((tiles + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(codec.from_tiles(back, 37, 70), img)
    # tile (row 1, col 2) holds pixels [16:32, 32:48]
    assert np.array_equal(back[1 * 5 + 2], img[16:32, 32:48])


def test_progressive_distortion_falls_and_prefixes_decode(model):
    imgs = smooth_images(2, seed=5)
    files = [codec.encode(img, model, settings=SETTINGS).data for img in imgs]
    rmse = []
    for steps in (100, 600, 990):
        errs = []
        for img, data in zip(imgs, files):
            dec = codec.decode(data, model, steps=steps)
            assert not dec.lossless and dec.reverse_time <= steps
            errs.append(np.mean((dec.image.astype(float) - img) ** 2))
        rmse.append(np.sqrt(np.mean(errs)))
    assert rmse[0] > rmse[1] > rmse[2]


def test_lossy_encode_stops_early_and_is_smaller(model):
    img = smooth_images(1, seed=7)[0]
    full = codec.encode(img, model, settings=SETTINGS)
    lossy = codec.encode(img, model, settings=SETTINGS, max_reverse_time=900)
    assert not lossy.lossless and len(lossy.data) < len(full.data)
    assert all(r.reverse_time <= 900 for r in lossy.steps)
    dec = codec.decode(lossy.data, model)
    assert dec.reverse_time == lossy.steps[-1].reverse_time


def test_steps_stop_exactly_where_asked(model):
    """``max_reverse_time=N`` between two of the schedule's times a > b: the file (format version 5) holds the
    schedule's steps down to a and one step straight to t = T - N + 1, and decodes to reverse time N, to the
    encoder's own reconstruction there; at a schedule time, or in format 2, no stop (the schedule's steps)."""
    from ddpm_codec.eval.metrics import psnr

    img = smooth_images(1, seed=41)[0]
    T = model.diffusion.num_timesteps
    ts = list(SETTINGS.timesteps(T))
    i = next(k for k in range(len(ts) - 1) if ts[k] - ts[k + 1] >= 2 and k >= 2)
    a, b = ts[i], ts[i + 1]
    t_stop = (a + b) // 2
    n = T - t_stop + 1
    res = codec.encode(img, model, settings=SETTINGS, max_reverse_time=n)
    parsed = container.unpack(res.data)
    assert res.data[2] >> 4 == 5 and parsed.file.header.stop == t_stop and not res.lossless
    assert [r.t for r in res.steps] == [T] + ts[1:i + 1] + [t_stop] and res.steps[-1].reverse_time == n
    dec = codec.decode(res.data, model)
    assert dec.reverse_time == n and dec.steps_decoded == len(res.steps)
    assert abs(psnr(dec.image, img) - res.steps[-1].psnr) < 1e-6   # the decoder sees what the encoder saw
    assert codec.decode(res.data, model, steps=n - 1).reverse_time == T - a + 1
    from ddpm_codec.codec.describe import describe_file

    assert any(f"stops exactly at t = {t_stop} " in line for line in describe_file(res.data, "f"))
    # at a schedule time: no stop (flag bit 3), the last segment's step count instead; format 2 (lossy:
    # version 1): the old stop at the last time a
    at = codec.encode(img, model, settings=SETTINGS, max_reverse_time=T - a + 1)
    assert at.data[2] >> 4 == 5 and not at.data[2] & 8 and container.unpack(at.data).file.header.stop is None
    assert sum(g.num_steps for g in container.unpack(at.data).file.segments) == i + 1   # the prior step, ts[1..i]
    assert codec.decode(at.data, model).reverse_time == T - a + 1
    lossless = codec.encode(img, model, settings=SETTINGS).data
    assert lossless[2] >> 4 == 5 and not lossless[2] & 8   # a lossless file: version 5 too, no stop
    v4 = codec.encode(img, model, settings=SETTINGS, max_reverse_time=n, format_version=4)
    assert v4.data[2] >> 4 == 4 and container.unpack(v4.data).file.header.stop == t_stop
    old = codec.encode(img, model, settings=SETTINGS, max_reverse_time=n, format_version=2)
    assert old.data[2] >> 4 == 1 and old.steps[-1].t == a
    assert [g.payload for g in container.unpack(old.data).file.segments] == \
        [g.payload for g in container.unpack(at.data).file.segments]   # the same steps, framed otherwise
    assert old.steps[-1].reverse_time == codec.decode(old.data, model).reverse_time == T - a + 1
    # a file whose stop is a schedule time or lies outside the chain is refused as corrupt (versions 4, 5)
    from ddpm_codec.codec.api import crc_key

    p4 = container.unpack(v4.data).file
    with pytest.raises(container.CorruptFileError, match="stop"):
        codec.decode(container.pack(replace(p4, header=replace(p4.header, stop=a))), model)
    for bad_stop in (a, ts[-1] - 1):
        bad = container.pack(replace(parsed.file, header=replace(parsed.file.header, stop=bad_stop,
                                                                 crc_key=crc_key(model, SETTINGS))))
        with pytest.raises(container.CorruptFileError, match="stop"):
            codec.decode(bad, model)


@pytest.mark.parametrize("version", [3, 2, 1])
def test_truncated_file_decodes_its_complete_segments(model, version):
    img = smooth_images(1, seed=8)[0]
    res = codec.encode(img, model, settings=SETTINGS, min_segment_bytes=8, format_version=version)
    parsed = container.unpack(res.data)
    assert parsed.file.header.x0_in_stream == (version > 1) and res.data[2] >> 4 == version
    segs = parsed.file.segments
    assert len(segs) >= 3
    # cut the file right after the second segment's payload (trailer: pixel CRC-32 and file CRC-16; v3 one CRC-32)
    trailer = 4 if version == 3 else 6
    header_len = len(res.data) - trailer - sum(len(s.payload) for s in segs) - len(parsed.file.x0 or b"")
    cut = header_len + len(segs[0].payload) + len(segs[1].payload)
    dec = codec.decode(res.data[:cut], model)
    assert dec.truncated and not dec.lossless
    assert dec.steps_decoded == segs[0].num_steps + segs[1].num_steps
    # every step but no pixel checksum: the whole chain decodes, nothing claims to be exact
    dec = codec.decode(res.data[:-trailer], model)
    assert dec.truncated and not dec.lossless and dec.steps_decoded == sum(s.num_steps for s in segs)


def test_x0_in_stream_is_smaller_and_both_versions_decode(model):
    """Version 2 codes x_0 at the end of the step stream: no x0_length field and no ANS state of
    its own, so the same image's file is smaller than version 1's, and both decode exactly."""
    total = {True: 0, False: 0}
    for img in smooth_images(3, seed=21):
        for v2 in (True, False):
            res = codec.encode(img, model, settings=SETTINGS, x0_in_stream=v2)
            assert np.array_equal(codec.decode(res.data, model).image, img)
            total[v2] += len(res.data)
    assert total[True] < total[False]


def test_wrong_model_is_refused(model):
    img = smooth_images(1)[0]
    data = codec.encode(img, model, settings=SETTINGS).data
    other = with_stats(fresh_model(get_preset("tiny")), model.diffusion.x0_mse)
    with pytest.raises(codec.DecodeError, match="encoded with model"):
        codec.decode(data, other)


def test_diverged_network_is_detected(model, monkeypatch):
    """If the decoder's network output differs slightly from the encoder's, the lossless
    decode must fail loudly (checksum), never write a wrong image silently."""
    img = smooth_images(1, seed=2)[0]
    data = codec.encode(img, model, settings=SETTINGS).data
    real = chain.Net.__call__

    def perturbed(self, x, t):
        return real(self, x, t) + 1e-3
    monkeypatch.setattr(chain.Net, "__call__", perturbed)
    with pytest.raises(codec.DecodeError, match="checksum"):
        codec.decode(data, model)


def test_bad_inputs_are_refused(model):
    with pytest.raises(ValueError, match="8-bit"):
        codec.encode(np.zeros((8, 8, 3), np.uint16), model, settings=SETTINGS)
    rgba = np.zeros((8, 8, 4), np.uint8)
    with pytest.raises(ValueError, match="transparency"):
        codec.encode(rgba, model, settings=SETTINGS)
    with pytest.raises(container.ForeignFileError):
        codec.decode(b"\x89PNG\r\n\x1a\n" + bytes(40), model)
    with pytest.raises(ValueError, match="reconstruction"):
        codec.decode(b"", model, reconstruct="magic")


def test_reconstruction_modes_run(model):
    img = smooth_images(1, seed=4)[0]
    data = codec.encode(img, model, settings=SETTINGS, max_reverse_time=800).data
    for mode in ("denoise", "ancestral", "flow"):
        dec = codec.decode(data, model, reconstruct=mode, reconstruct_steps=5)
        assert dec.image.shape == img.shape and dec.image.dtype == np.uint8


def test_kl_report_matches_theoretical_chain_order(model):
    """The real coder's per-step KL bound and the KL-only trace share the chain and units."""
    img = smooth_images(1, seed=9)[0]
    real = codec.encode(img, model, settings=SETTINGS)
    theo = codec.trace_theoretical(img, model, settings=SETTINGS)
    assert [r.t for r in real.steps] == [r.t for r in theo.steps] == [1000] + SETTINGS.timesteps(1000)[1:]
    # L_T of both chains is the same closed form (x_T's step): KL(q(x_T|x_0) || N(0, I))
    assert real.steps[0].kl_bits == pytest.approx(theo.steps[0].kl_bits, rel=1e-6)


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_round_trip_in_separate_processes(model, tmp_path):
    from PIL import Image

    mpath = save_model(tmp_path / "m.safetensors", model.net, model.config)
    img = smooth_images(1, seed=11)[0][:30, :20]
    Image.fromarray(img).save(tmp_path / "in.png")
    exe = [sys.executable, "-m", "ddpm_codec.cli.main"]
    args = ["--model", str(mpath), "--coding-steps", "12", "--t-end", "2", "--chunk-bits", "2", "--candidates", "8"]
    r = subprocess.run(exe + ["encode", str(tmp_path / "in.png"), "-o", str(tmp_path / "x.ddpm"), *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "T-t+1" in r.stdout and "KL bits" in r.stdout and "bits/dim" in r.stdout
    r = subprocess.run(exe + ["decode", str(tmp_path / "x.ddpm"), "-o", str(tmp_path / "out.png"), "--model", str(mpath)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), img)
    r = subprocess.run(exe + ["info", str(tmp_path / "x.ddpm")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "lossless" in r.stdout
    states = 8 - 2 + codec.default_settings().reuse_bits  # 2^(candidates - path bits + reuse) states
    assert f"trellis coder: 2^{states} states on 2^8 pool rows, 2 path bits per segment" in r.stdout
    assert "one coded stream" in r.stdout
    # a damaged file: clear message, non-zero exit, no output written
    data = bytearray((tmp_path / "x.ddpm").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.ddpm").write_bytes(bytes(data))
    r = subprocess.run(exe + ["decode", str(tmp_path / "bad.ddpm"), "-o", str(tmp_path / "bad.png"), "--model", str(mpath)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Error" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.png").exists()


def test_cli_profile_option(model, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from ddpm_codec.cli.main import main

    mpath = save_model(tmp_path / "m.safetensors", model.net, model.config)
    Image.fromarray(smooth_images(1, seed=5)[0]).save(tmp_path / "in.png")
    base = ["encode", str(tmp_path / "in.png"), "--model", str(mpath), "-q", "--steps", "300"]
    r = CliRunner().invoke(main, base + ["-o", str(tmp_path / "p1.ddpm"), "--profile", "1"])
    assert r.exit_code == 0, r.output
    _, settings = codec.read_header((tmp_path / "p1.ddpm").read_bytes())
    assert settings == codec.PROFILES[1]
    # an override on top of a profile makes an explicit schedule with that one value changed
    r = CliRunner().invoke(main, base + ["-o", str(tmp_path / "p1b.ddpm"), "--profile", "1", "--t-end", "3"])
    assert r.exit_code == 0, r.output
    parsed, settings = codec.read_header((tmp_path / "p1b.ddpm").read_bytes())
    assert parsed.file.header.profile is None and settings == replace(codec.PROFILES[1], t_end=3)
    r = CliRunner().invoke(main, base + ["-o", str(tmp_path / "p9.ddpm"), "--profile", "99"])
    assert r.exit_code != 0 and "unknown profile '99'" in r.output and not (tmp_path / "p9.ddpm").exists()


def test_top_level_api_round_trip(model):
    import ddpm_codec as dc

    img = smooth_images(1, seed=3)[0]
    res = dc.encode(img, model, settings=SETTINGS)
    assert isinstance(res.data, bytes) and np.array_equal(dc.decode(res.data, model).image, img)
    assert dc.load_model is not None and dc.DecodeError is codec.DecodeError
    with pytest.raises(AttributeError):
        dc.no_such_name


TRELLIS = codec.settings_with(2, num_steps=12, t_end=2, chunk_bits=2, log2_candidates=8, selection="trellis",
                              rate_percent=110)


def _cut_points(data: bytes):
    """(byte offset after segment k, steps in segments 0..k) for every segment but the last."""
    parsed = container.unpack(data)
    segs = parsed.file.segments
    h = parsed.file.header   # trailer: file CRC-16 (+ pixel CRC-32 if lossless); version 3 lossless: one CRC-32
    tail = 4 if h.compact and h.lossless else 2 + (len(parsed.file.x0 or b"") + 4 if h.lossless else 0)
    pos = len(data) - tail - sum(len(s.payload) for s in segs)
    steps, out = 0, []
    for s in segs[:-1]:
        pos += len(s.payload)
        steps += s.num_steps
        out.append((pos, steps))
    return out


@ARITHMETICS
def test_trellis_round_trip_and_every_segment_boundary_decodes(model, exact):
    """Trellis coder, one stream cut into segments: bit-exact lossless; a file cut at ANY segment
    boundary decodes exactly the steps before it, to the same image as `--steps` on the full file."""
    img = smooth_images(1, seed=11)[0]
    settings = replace(TRELLIS, exact=exact)
    res = codec.encode(img, model, settings=settings, min_segment_bytes=4)
    header = container.unpack(res.data).file.header
    assert header.one_stream and header.schedule.selection == codec.SELECTION_IDS.index("trellis")
    assert codec.read_header(res.data)[1] == settings
    assert np.array_equal(codec.decode(res.data, model).image, img)
    cuts = _cut_points(res.data)
    assert len(cuts) >= 3
    for pos, steps in cuts:
        part = codec.decode(res.data[:pos], model)
        assert part.truncated and part.steps_decoded == steps
        full = codec.decode(res.data, model, steps=part.reverse_time)
        assert full.steps_decoded == steps and np.array_equal(full.image, part.image)
    # one byte short of a boundary: that segment is incomplete, the previous boundary's steps decode
    pos, steps = cuts[1]
    assert codec.decode(res.data[:pos - 1], model).steps_decoded == cuts[0][1]


def test_no_short_last_segment_and_the_estimate_follows_the_file(monkeypatch):
    """A lossy file's last segment holds at least ``min_segment_bytes`` (64): a short tail joins the segment
    before it, since its table entry, the header CRC-8 and format 4's implied length (4 bytes here) cost more
    than a preview a few bytes earlier is worth. Shipped model, default profile, ``--steps 900``, CIFAR-10 test
    images 0, 1 and 3, whose streams would otherwise end 19, 9 and 1 bytes after a cut. The encoder's size
    estimate of the file (``cum_bpd`` of its last step, what rd-curve reads) stays within a byte of it."""
    from ddpm_codec.codec import stream
    from ddpm_codec.data import load_images_or_sample
    from ddpm_codec.models.registry import resolve_model

    shipped = resolve_model()
    imgs = load_images_or_sample("cifar10-sample", "test")[0][[0, 1, 3]]
    merged = [codec.encode(img, shipped, max_reverse_time=900, metrics=False) for img in imgs]
    monkeypatch.setattr(stream.StepStream, "_kept",
                        lambda self, cuts, end, at: [c for c in cuts if c[0][0] < len(self.written)])
    every_cut = [codec.encode(img, shipped, max_reverse_time=900, metrics=False) for img in imgs]
    for img, a, b in zip(imgs, merged, every_cut):
        segs_a, segs_b = container.unpack(a.data).file.segments, container.unpack(b.data).file.segments
        assert len(segs_a) == 1 and len(segs_b) == 2 and len(segs_b[-1].payload) < 64
        assert len(b.data) - len(a.data) == 4 and segs_a[0].payload == segs_b[0].payload + segs_b[1].payload
        assert abs(a.steps[-1].cum_bpd * img.size / 8 - len(a.data)) <= 1
        assert codec.decode(a.data, shipped).reverse_time == 900


def test_count_model_2_walks_count_model_1s_chain_for_fewer_count_bits(model):
    """Count model 2 changes how the counts are coded, not which are sent: the same chunk counts, paths and
    x_0 code as count model 1 (profile 13 against 12), fewer count bits in all, and the file decodes."""
    imgs = smooth_images(3, seed=61)
    base = replace(TRELLIS, count_model=1, exact=1)
    total = {1: 0.0, 2: 0.0}
    for img in imgs:
        res = {cm: codec.encode(img, model, settings=replace(base, count_model=cm)) for cm in (1, 2)}
        a, b = res[1].accounting, res[2].accounting
        assert [r.chunks for r in res[1].steps] == [r.chunks for r in res[2].steps]
        assert [s.index_bits for s in a.steps] == [s.index_bits for s in b.steps] and a.x0_bits == b.x0_bits
        for cm in (1, 2):
            total[cm] += sum(s.count_bits for s in res[cm].accounting.steps)
        assert np.array_equal(codec.decode(res[2].data, model).image, img)
    # the prior step alone: an Elias-gamma code of 0 (log2 of 1 + the bit length of D) against ~0.2 bits
    assert total[2] < total[1] - 3 * 3.0


def test_trellis_costs_its_path_bits(model):
    """Every coded step costs its path (C·b raw bits) plus its count, and a count costs at most
    -log2(2^-10 / (D + 1)) = 21.6 bits (the count model's uniform floor) even when mispredicted
    (as here: an untrained model's KLs cap C at D); ±32 bits for the coder's word granularity."""
    img = smooth_images(1, seed=12)[0]
    res = codec.encode(img, model, settings=TRELLIS)
    steps = [r for r in res.steps if r.chunks > 0]
    assert steps
    path = sum(2 * r.chunks for r in res.steps)
    actual = sum(r.actual_bits for r in res.steps)
    assert path <= actual + 32 <= path + 21.6 * len(res.steps) + 64


def test_files_with_one_stream_per_segment_still_decode(model):
    """Files written before the one-stream layout (each segment its own stream, little-endian
    words) decode: a single-segment file converted to that layout gives the same pixels."""
    img = smooth_images(1, seed=13)[0]
    res = codec.encode(img, model, settings=SETTINGS, min_segment_bytes=1 << 30, x0_in_stream=False)
    f = container.unpack(res.data).file
    assert len(f.segments) == 1
    words = stream.stream_words(f.segments[0].payload)
    old = replace(f, header=replace(f.header, one_stream=False),
                  segments=[container.Segment(f.segments[0].num_steps, words.astype("<u4").tobytes())])
    dec = codec.decode(container.pack(old), model)
    assert dec.lossless and np.array_equal(dec.image, img)


def test_corrupted_or_cut_trellis_files_fail_cleanly(model):
    """Random byte changes and cuts of a one-stream trellis file: a format or decode error (never
    another exception, never a wrong 'lossless' image), or, for cuts, a decode of complete segments."""
    import random

    img = smooth_images(1, seed=14)[0]
    data = codec.encode(img, model, settings=TRELLIS, min_segment_bytes=8).data
    rng = random.Random(0)
    for trial in range(24):
        bad = bytearray(data)
        if trial % 3 == 0:
            bad = bad[: rng.randrange(1, len(bad))]
        else:
            for _ in range(rng.randint(1, 3)):
                bad[rng.randrange(len(bad))] ^= rng.randrange(1, 256)
        try:
            dec = codec.decode(bytes(bad), model)
        except (container.DdpmFormatError, codec.DecodeError):
            continue
        assert dec.truncated or np.array_equal(dec.image, img)
        if dec.lossless:
            assert np.array_equal(dec.image, img)


@pytest.mark.parametrize("version", [4, 5])
def test_fuzzed_format_4_files_with_repaired_checksums_reach_the_decoder(model, version):
    """A lossy format-4 or 5 file with a stop, its payload bytes, its stop or its step count changed and the
    file re-packed (the CRC-16 right again, keyed by the model's fingerprint in version 5, so the decoder runs on
    the damage): a format or decode error, or a picture of the right size from the reverse time the header
    names; never another exception."""
    import random

    img = smooth_images(1, seed=17)[0]
    T = model.diffusion.num_timesteps
    ts = list(TRELLIS.timesteps(T))
    t_stop = (ts[3] + ts[4]) // 2
    from ddpm_codec.codec.api import crc_key

    data = codec.encode(img, model, settings=TRELLIS, max_reverse_time=T - t_stop + 1, format_version=version).data
    f = container.unpack(data).file
    f.header.crc_key = crc_key(model, TRELLIS)
    assert f.header.stop == t_stop and container.unpack(data).version == version and container.pack(f) == data
    rng = random.Random(5)
    errors = decoded = 0
    for trial in range(30):
        g = replace(f, header=replace(f.header), segments=[replace(x) for x in f.segments])
        if trial % 3 == 0:
            g.header.stop = rng.randrange(1, T + 1)
        elif trial % 3 == 1 and g.segments[-1].num_steps:
            g.segments[-1].num_steps = rng.randrange(1, 3 * g.segments[-1].num_steps)
        elif trial % 3 == 1:   # version 5: the last segment's steps are implied by the stop: move the stop
            g.header.stop = rng.choice(ts + [rng.randrange(1, T + 1)])
        else:
            pay = bytearray(g.segments[-1].payload)
            for _ in range(rng.randint(1, 3)):
                pay[rng.randrange(len(pay))] ^= rng.randrange(1, 256)
            g.segments[-1].payload = bytes(pay)
        try:
            dec = codec.decode(container.pack(g), model)
        except (container.DdpmFormatError, codec.DecodeError):
            errors += 1
            continue
        decoded += 1
        assert dec.image.shape == img.shape and not dec.lossless
        # a step of the chain the (changed) header names: a schedule time above its stop, or the stop itself
        assert dec.reverse_time in {T - t + 1 for t in ts if t > g.header.stop} | {T - g.header.stop + 1}
    assert errors >= 5 and decoded >= 5   # both outcomes reached


def test_encoding_on_an_accelerator_warns(model, monkeypatch):
    """GPU-encoded files failed to decode across processes on an H200 (2026-11-26): say so."""
    import warnings

    from ddpm_codec.models.checkpoint import LoadedModel

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chain.warn_if_accelerated(model)                      # CPU: silent
    monkeypatch.setattr(LoadedModel, "device", property(lambda self: torch.device("cuda", 0)))
    with pytest.warns(RuntimeWarning, match="cuda:0.*failed its checksum"):
        chain.warn_if_accelerated(model)


def test_count_model_travels_in_an_explicit_schedule(model):
    """Count model 1 (spike at the predicted count) and the trellis's reuse_bits travel in bits 4-5
    and 6-7 of the selection byte: an explicit trellis schedule with them round-trips, and decodes
    bit-exactly."""
    img = smooth_images(1, seed=11)[0]
    base = codec.settings_with(2, num_steps=10, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=10,
                               selection="trellis", rate_percent=105)
    for cm, rb in ((0, 0), (1, 0), (1, 3)):
        s = replace(base, count_model=cm, reuse_bits=rb)
        assert s.to_schedule().selection == 2 | (cm << 4) | (rb << 6)
        res = codec.encode(img, model, settings=s)
        parsed, back = codec.read_header(res.data)
        assert parsed.file.header.profile is None and back == s
        assert np.array_equal(codec.decode(res.data, model).image, img)
    # an unknown count model is refused as a corrupt file, not decoded with a guess
    bad = replace(base.to_schedule(), selection=2 | (3 << 4))
    with pytest.raises(container.CorruptFileError, match="count model"):
        codec.CodecSettings.from_schedule(bad)
    with pytest.raises(ValueError, match="count model"):
        replace(base, count_model=9)


def test_settings_with_another_coder_drops_trellis_states():
    s = codec.settings_with(6, selection="pfr", chunk_bits=10)
    assert s.selection == "pfr" and s.reuse_bits == 0 and s.rcc_config().state_bits == 0
    assert codec.settings_with(6, reuse_bits=1).reuse_bits == 1
    p6 = codec.settings_with(6)  # the codec hands the states to the coder: 2^(L - b + reuse)
    assert p6.rcc_config().state_bits == p6.log2_candidates - p6.chunk_bits + p6.reuse_bits > 10
    with pytest.raises(ValueError, match="reuse_bits"):
        codec.settings_with(6, selection="pfr", reuse_bits=2)


def test_x0_scale_factors_are_the_documented_powers_of_two():
    """X0_SCALE_FACTORS is written out (not computed) so both sides build identical scales; it must
    still be 2^((i - 10)/16) to the last bit or so, computed here independently."""
    f = np.array(codec.X0_SCALE_FACTORS)
    assert len(f) == 16 and f[10] == 1.0
    assert np.allclose(f, [2.0 ** ((i - 10) / 16) for i in range(16)], rtol=2e-16, atol=0)
    assert np.all(np.diff(f) > 0)


def test_x0_scale_choice_recovers_a_known_residual_scale():
    """Pixels drawn as round(mean + s·σ·z): the encoder's factor is the grid point nearest s (the
    Gaussian ML scale; σ is large against the 1-level bins, so rounding barely matters); two tiles
    with different s get their own factors."""
    rng = np.random.default_rng(7)
    size, sigma = 32, 12 / 127.5
    means = rng.uniform(-0.5, 0.5, size=(2, 3, size, size))
    true_s = np.array([0.75, 1.15])
    x = means + true_s[:, None, None, None] * sigma * rng.standard_normal(means.shape)
    pix = np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8)
    scales = np.full_like(means, sigma)
    mask = np.ones(means.shape, bool)
    idx = x0.choose_x0_scales(pix, means, scales, mask)
    chosen = np.array(codec.X0_SCALE_FACTORS)[idx]
    # 3072 samples per tile: the ML scale is within ~2 % of s; the grid step is 2^(1/16) = 4.4 %
    assert np.all(np.abs(np.log(chosen / true_s)) < np.log(2) / 16)
    assert idx[0] < 10 < idx[1]


@pytest.mark.slow
def test_x0_scale_and_large_reuse_travel_in_an_explicit_schedule(model):
    """x0_scale_bits rides in bits 4-7 of the variance byte, reuse_bits > 3 in bits 6-7 (low) and
    2-3 (high) of the selection byte; such files decode bit-exactly, on several tiles; old-style
    bytes (bits 2-3 and 4-7 zero) read as before; a version-1 file cannot carry the scales."""
    base = codec.settings_with(2, num_steps=10, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=10,
                               selection="trellis", rate_percent=105, count_model=1)
    img = smooth_images(1, size=48, seed=12)[0][:40, :45]
    for rb, xs in ((0, 4), (5, 0), (8, 4)):
        s = replace(base, reuse_bits=rb, x0_scale_bits=xs)
        sch = s.to_schedule()
        assert sch.selection == 2 | ((rb >> 2) << 2) | (1 << 4) | ((rb & 3) << 6)
        assert sch.variance_kind == 1 | (xs << 4)
        res = codec.encode(img, model, settings=s)
        parsed, back = codec.read_header(res.data)
        assert back == s and back.rcc_config().state_bits == 10 - 4 + rb
        assert np.array_equal(codec.decode(res.data, model).image, img)
    old = codec.CodecSettings.from_schedule(replace(base.to_schedule(), selection=2 | (1 << 4) | (3 << 6)))
    assert old.reuse_bits == 3 and old.x0_scale_bits == 0
    with pytest.raises(container.CorruptFileError, match="impossible"):
        codec.CodecSettings.from_schedule(replace(base.to_schedule(), variance_kind=1 | (3 << 4)))
    with pytest.raises(ValueError, match="version 2"):
        codec.encode(img, model, settings=replace(base, x0_scale_bits=4), x0_in_stream=False)


def test_x0_channel_prediction_recovers_known_coefficients_and_round_trips(model):
    """Residuals built as r_G = 0.25·r_R + noise/2, r_B = 0.125·r_R + 0.1875·r_G + noise/4: the
    encoder's per-tile coefficients are those table entries (least squares on 4096 pixels: standard
    errors <= 0.008 against the table's 0.0625 steps), and coding with them takes fewer ideal bits
    than without. Then a real file with
    the channel coefficients (explicit schedule, odd size: padded tiles) decodes bit-exactly."""
    rng = np.random.default_rng(3)
    size, sigma = 64, 10 / 127.5
    means = rng.uniform(-0.4, 0.4, size=(1, 3, size, size))
    r_r = sigma * rng.standard_normal((size, size))
    r_g = 0.25 * r_r + sigma * rng.standard_normal((size, size)) / 2
    r_b = 0.125 * r_r + 0.1875 * r_g + sigma * rng.standard_normal((size, size)) / 4
    x = means + np.stack([r_r, r_g, r_b])[None]
    pix = np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8)
    scales, mask = np.full_like(means, sigma), np.ones(means.shape, bool)
    s = codec.settings_with(2, x0_channel_bits=3)
    side = x0.X0Side.choose(s, pix, means, scales, mask)
    assert [codec.X0_CHANNEL_COEFS[i] for i in side.chan_idx[0]] == [0.25, 0.125, 0.1875]
    eff_means, eff_scales = side.apply(means, scales, pix, mask)
    assert np.array_equal(eff_means[:, 0], means[:, 0])  # R is coded as before
    from ddpm_codec.coding import entropy
    assert entropy.ideal_bits(pix, eff_means, eff_scales) < entropy.ideal_bits(pix, means, scales) - 50
    # a real file
    base = codec.settings_with(2, num_steps=10, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=10,
                               selection="trellis", rate_percent=105, count_model=1, x0_scale_bits=4,
                               x0_channel_bits=3)
    assert base.to_schedule().variance_kind == 1 | (4 << 4) | 0x80
    img = smooth_images(1, size=48, seed=13)[0][:37, :41]
    res = codec.encode(img, model, settings=base)
    parsed, back = codec.read_header(res.data)
    assert back == base
    assert np.array_equal(codec.decode(res.data, model).image, img)


def test_x0_neighbour_prediction_recovers_known_coefficients_and_round_trips(model):
    """Residuals generated in raster order with known channel and neighbour coefficients (all on
    the table's grid): the encoder's least squares recovers every one of the 21 (16384 pixels:
    standard errors ~0.01 against the table's 0.0625 steps); their ideal code is shorter than the
    channel-only model's; and a real file with them (explicit schedule, odd size: padded tiles)
    decodes bit-exactly."""
    rng = np.random.default_rng(5)
    size, sigma = 128, 10 / 127.5
    means = rng.uniform(-0.4, 0.4, size=(1, 3, size, size))
    chan = {1: [0.25], 2: [0.125, 0.1875]}                       # G|R; B|R, B|G
    nb = np.zeros((3, 6))                                       # (up R, G, B, left R, G, B) per channel
    nb[0, 0], nb[0, 3] = 0.25, 0.125
    nb[1, 1], nb[1, 4], nb[1, 3] = 0.1875, 0.0625, -0.0625
    nb[2, 2], nb[2, 0] = 0.25, 0.0625
    r = np.zeros((3, size, size))
    noise = sigma * rng.standard_normal((3, size, size))
    for y in range(size):
        for x in range(size):
            for c in range(3):
                v = noise[c, y, x] + sum(a * r[k, y, x] for k, a in enumerate(chan.get(c, [])))
                for k in range(3):
                    v += nb[c, k] * (r[k, y - 1, x] if y else 0.0) + nb[c, 3 + k] * (r[k, y, x - 1] if x else 0.0)
                r[c, y, x] = v
    pix = np.clip(np.round((means + r[None] + 1) * 127.5), 0, 255).astype(np.uint8)
    scales, mask = np.full_like(means, sigma), np.ones(means.shape, bool)
    table = np.array(codec.X0_CHANNEL_COEFS)
    side = x0.X0Side.choose(codec.settings_with(2, x0_channel_bits=3, x0_neighbours=1), pix, means, scales, mask)
    assert list(table[side.chan_idx[0]]) == [0.25, 0.125, 0.1875]
    assert np.array_equal(table[side.nb_idx[0]], nb)
    plain = x0.X0Side.choose(codec.settings_with(2, x0_channel_bits=3), pix, means, scales, mask)
    from ddpm_codec.coding import entropy
    bits = [entropy.ideal_bits(pix, *s.apply(means, scales, pix, mask)) for s in (plain, side)]
    assert bits[1] < bits[0] - 500
    base = codec.settings_with(2, num_steps=10, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=10,
                               selection="trellis", rate_percent=105, count_model=1, x0_scale_bits=4,
                               x0_channel_bits=3, x0_neighbours=1)
    assert base.to_schedule().variance_kind == 1 | (4 << 4) | 0x80 | 0x20
    img = smooth_images(1, size=48, seed=14)[0][:37, :41]
    res = codec.encode(img, model, settings=base)
    assert codec.read_header(res.data)[1] == base
    assert np.array_equal(codec.decode(res.data, model).image, img)
    with pytest.raises(ValueError, match="x0_neighbours"):
        replace(base, x0_channel_bits=0)
    with pytest.raises(container.CorruptFileError, match="impossible"):   # bit 5 (neighbours) needs bit 7 (channels)
        codec.CodecSettings.from_schedule(replace(base.to_schedule(), variance_kind=1 | 0x20))
    # bit 4 is exact arithmetic (format: docs/FORMAT.md)
    assert codec.CodecSettings.from_schedule(replace(base.to_schedule(), variance_kind=1 | 0x10)).exact == 1


def test_network_runs_on_the_codec_thread_count_whatever_ran_before(model, monkeypatch):
    """Float sums depend on the thread count, so encoder and decoder must evaluate the network on
    CODEC_THREADS even if something in between (an OpenMP library; a parallel numba search once did)
    changed torch's count: the first profile-7 files did not decode because of this."""
    seen = []
    real_eps = type(model).eps
    monkeypatch.setattr(type(model), "eps", lambda self, x, t: (seen.append(torch.get_num_threads()),
                                                                 real_eps(self, x, t))[1])
    old = torch.get_num_threads()
    try:
        net = chain.Net(model)
        x = torch.zeros(1, 3, 32, 32, dtype=torch.float64)
        with chain.deterministic_settings():
            torch.set_num_threads(2)   # what the parallel search did behind the encoder's back
            net(x, 5)
            assert torch.get_num_threads() == 2   # set for the call only: the caller's count is left alone
        assert seen == [chain.CODEC_THREADS]
    finally:
        torch.set_num_threads(old)


def test_compact_format_round_trips_and_is_smaller(model):
    """Format version 3 (compact framing) holds the same payloads in fewer framing bytes: lossless
    files decode exactly (their one CRC-32 checked against the decoded pixels), lossy ones to the
    same step, and a damaged payload byte is an error, never a wrong image."""
    img = smooth_images(1, seed=31)[0]
    for kw in ({}, {"max_reverse_time": 900}):
        v2 = codec.encode(img, model, settings=SETTINGS, format_version=2, **kw)
        v3 = codec.encode(img, model, settings=SETTINGS, format_version=3, **kw)   # (default: 4 for the exact stop)
        p2, p3 = container.unpack(v2.data), container.unpack(v3.data)
        assert p3.version == 3 and [s.payload for s in p3.file.segments] == [s.payload for s in p2.file.segments]
        # seed 0 (1 byte), square size (1), fingerprint (1); lossless: CRC-16 (2); one-segment lossy: CRC-8 (1)
        saved = 5 if v2.lossless else 3 + (len(p2.file.segments) == 1)
        assert len(v2.data) - len(v3.data) == saved
        d2, d3 = codec.decode(v2.data, model), codec.decode(v3.data, model)
        assert np.array_equal(d2.image, d3.image) and d3.lossless == v3.lossless
    assert d3.reverse_time == v3.steps[-1].reverse_time
    lossless = codec.encode(img, model, settings=SETTINGS, format_version=3)
    assert codec.decode(lossless.data, model).lossless
    assert codec.encode(img, model, settings=SETTINGS, format_version=1).data[2] >> 4 == 1
    from ddpm_codec.errors import InputError
    with pytest.raises(InputError, match="version 2"):   # exact arithmetic codes x_0 in the stream
        codec.encode(img, model, settings=replace(SETTINGS, exact=1), format_version=1)
    with pytest.raises(InputError, match="unknown format version 6"):
        codec.encode(img, model, settings=SETTINGS, format_version=6)
    bad = bytearray(lossless.data)
    bad[-20] ^= 0x10   # inside x_0's part of the stream: decodes, but fails the merged CRC-32
    with pytest.raises(codec.DecodeError, match="checksum"):
        codec.decode(bytes(bad), model)


def test_format_5_is_smaller_and_its_keyed_checksum_checks_the_model(model):
    """Version 5 (the default): the payloads of versions 3/4 with a one-byte fingerprint and checksums keyed by
    the coding fingerprint. A model whose fingerprint shares that byte passes the byte check but fails the
    checksum: a lossy file before its first step, a lossless one at its pixels; never a picture."""
    img = smooth_images(1, seed=35)[0]
    other = with_stats(fresh_model(get_preset("tiny")), model.diffusion.x0_mse)
    other.fingerprint = model.fingerprint[:2] + other.fingerprint[2:]   # the same first byte, another model
    assert other.fingerprint != model.fingerprint
    for kw in ({}, {"max_reverse_time": 900}):
        v4 = codec.encode(img, model, settings=SETTINGS, format_version=4, **kw)
        v5 = codec.encode(img, model, settings=SETTINGS, **kw)
        p4, p5 = container.unpack(v4.data), container.unpack(v5.data)
        assert p5.version == 5 and p4.version == (4 if kw else 3)
        assert [s.payload for s in p5.file.segments] == [s.payload for s in p4.file.segments]
        f4, f5 = dict(p4.fields), dict(p5.fields)
        # 2 fingerprint bytes less; an explicit schedule costs version 5 its settings byte 0 and, where version 4
        # left them out (selection 0, rate 100: this PFR one), its coder fields
        extra = 1 + (0 if SETTINGS.to_schedule().has_coder_fields else 2)
        assert (f4["fingerprint"], f5["fingerprint"], f5["schedule"] - f4["schedule"]) == (3, 1, extra)
        # the last segment's step count (1 byte here) is implied by the end of the chain or by the stop
        assert f4["segment table"] - f5["segment table"] == 1 and ("stop" in f5) == ("stop" in f4) != v5.lossless
        assert len(v4.data) - len(v5.data) == 2 - extra + 1 - (f5.get("stop", 0) - f4.get("stop", 0))
        d4, d5 = codec.decode(v4.data, model), codec.decode(v5.data, model)
        assert np.array_equal(d4.image, d5.image) and d5.lossless == (not kw) and d5.reverse_time == d4.reverse_time
        with pytest.raises((codec.DecodeError, container.CorruptFileError), match="checksum"):
            codec.decode(v5.data, other)
        bad = bytearray(v5.data)
        bad[-3] ^= 0x01   # inside the payload (lossy) or x_0's part of the stream (lossless)
        with pytest.raises((codec.DecodeError, container.CorruptFileError), match="checksum"):
            codec.decode(bytes(bad), model)


def test_bit_accounting_adds_up_to_the_file(model):
    """decode(account=True): the framing fields and the payload make the file; the index bits are
    the path bits sent (chunk_bits per chunk); the counts and x_0 are their model code lengths,
    as the encoder measured x_0; what is left (the coder's rounding and cuts) is small."""
    img = smooth_images(1, seed=32)[0]
    settings = codec.settings_with(12, num_steps=12, t_end=2, log2_candidates=8, reuse_bits=0, x0_context=0)
    res = codec.encode(img, model, settings=settings)
    acc = codec.decode(res.data, model, account=True).accounting
    assert acc.framing_bits + 8 * acc.payload_bytes == 8 * len(res.data)
    assert [s.t for s in acc.steps] == [r.t for r in res.steps]
    assert [s.chunks for s in acc.steps] == [r.chunks for r in res.steps]
    assert all(s.index_bits == settings.chunk_bits * s.chunks for s in acc.steps)
    assert all(s.count_bits > 0 for s in acc.steps)
    assert acc.x0_bits == pytest.approx(res.x0_ideal_bits, rel=1e-9)   # (this untrained model's: huge)
    assert acc == res.accounting   # the decoder finds from the file what the encoder wrote
    lossy = codec.encode(img, model, settings=settings, max_reverse_time=990, format_version=3)
    acc = codec.decode(lossy.data, model, account=True).accounting
    assert acc.x0_bits is None and acc.framing_bits + 8 * acc.payload_bytes == 8 * len(lossy.data)
    assert -8 < acc.padding_bits < 40   # the stream's last byte, the coder's rounding


def test_the_report_says_what_a_cut_file_costs(model):
    """A step's cum_bpd (what rd-curve plots) is the size of the lossy file that stops there, within a
    few bytes (estimated from the steps' code lengths; the file's own cut is found by reading back),
    and a step's actual bits are its count and path bits."""
    img = smooth_images(1, seed=33)[0]
    for fmt in (2, 3):
        full = codec.encode(img, model, settings=TRELLIS, format_version=fmt, min_segment_bytes=8)
        for k in (2, 5, len(full.steps) - 2):
            rt = full.steps[k].reverse_time
            lossy = codec.encode(img, model, settings=TRELLIS, format_version=fmt, min_segment_bytes=8,
                                 max_reverse_time=rt)
            assert lossy.steps[-1].reverse_time == rt
            assert abs(full.steps[k].cum_bpd * img.size / 8 - len(lossy.data)) <= 3
    acc = full.accounting
    assert [r.actual_bits for r in full.steps] == [s.count_bits + s.index_bits for s in acc.steps]


def test_stream_end_rounded_up_is_never_longer_and_decodes(model, monkeypatch):
    """The stream's last byte rounded up (StepStream._round_up_end) where that still reads back: the
    files decode to the same steps as the plain shortest prefix's, and are never longer."""
    imgs = smooth_images(6, seed=34)
    sizes = {}
    for rounded in (True, False):
        if not rounded:
            monkeypatch.setattr(stream.StepStream, "_round_up_end", lambda self, data: data)
        sizes[rounded] = []
        for img in imgs:
            res = codec.encode(img, model, settings=TRELLIS, max_reverse_time=990)
            dec = codec.decode(res.data, model)
            assert dec.steps_decoded == len(res.steps) and not dec.truncated
            sizes[rounded].append(len(res.data))
    assert all(a <= b for a, b in zip(sizes[True], sizes[False])) and sum(sizes[True]) < sum(sizes[False])


def test_effort_keeps_the_smallest_of_its_seeds(model):
    """``effort=E`` codes with seeds s .. s+E-1 and keeps the smallest file: each try is an ordinary file of
    that seed (the header names it, it decodes exactly), so the kept one is the minimum of E one-seed encodes;
    a seed other than 0 costs its varint byte, inside the length compared."""
    img = smooth_images(1, seed=23)[0]
    one = {s: codec.encode(img, model, settings=SETTINGS, seed=s, metrics=False).data for s in range(2, 6)}
    assert len(set(one.values())) == 4   # four codebooks, four files
    res = codec.encode(img, model, settings=SETTINGS, seed=2, effort=4, metrics=False)
    assert res.seeds_tried == 4 and res.data == min(one.values(), key=len)
    assert container.unpack(res.data).file.header.seed == res.seed and one[res.seed] == res.data
    assert np.array_equal(codec.decode(res.data, model).image, img)
    # a lossy file at a stop: the smallest of the tries too, at the same reverse time
    lossy = codec.encode(img, model, settings=SETTINGS, max_reverse_time=700, effort=3, metrics=False)
    sizes = [len(codec.encode(img, model, settings=SETTINGS, max_reverse_time=700, seed=s, metrics=False).data)
             for s in range(3)]
    assert len(lossy.data) == min(sizes) and lossy.steps[-1].reverse_time == 700
    for bad in (0, codec.api.MAX_EFFORT + 1):
        with pytest.raises(codec.api.InputError, match="effort must be 1 to"):
            codec.encode(img, model, settings=SETTINGS, effort=bad)


def test_effort_key_at_a_rate_prefers_further_then_sharper():
    """With ``max_bpd`` every try stops near the same rate: the one that reaches further wins, then the better
    PSNR, then the shorter file; a lossless try (x_0 itself) reaches furthest. Hand-made results."""
    def res(rt, psnr, n, lossless=False):
        rec = codec.StepRecord(reverse_time=rt, t=1001 - rt, kl_bits=0.0, actual_bits=0.0, cum_kl_bpd=0.0,
                               cum_bpd=0.0, rmse=0.0, psnr=psnr, chunks=0)
        return codec.EncodeResult(data=b"x" * n, steps=[rec], lossless=lossless)
    key = codec.api.effort_key
    tries = [res(900, 30.0, 10), res(950, 20.0, 12), res(950, 25.0, 14), res(950, 25.0, 13)]
    assert min(tries, key=lambda r: key(r, True)) is tries[3]
    assert min(tries, key=lambda r: key(r, False)) is tries[0]
    assert min(tries + [res(1000, float("inf"), 99, lossless=True)], key=lambda r: key(r, True)).lossless
    assert key(res(950, float("nan"), 5), True) > key(res(950, 1.0, 9), True)   # no metrics: PSNR unknown, last


def test_cli_effort_option(model, tmp_path):
    """``encode --effort 3``: one file, the smallest of seeds 0-2 (what three ``--seed`` encodes write), the kept
    file's per-step table after the tries, and a line naming the seed kept."""
    from click.testing import CliRunner
    from PIL import Image

    from ddpm_codec.cli.main import main

    mpath = save_model(tmp_path / "m.safetensors", model.net, model.config)
    Image.fromarray(smooth_images(1, seed=6)[0]).save(tmp_path / "in.png")
    base = ["encode", str(tmp_path / "in.png"), "--model", str(mpath), "--coding-steps", "12", "--t-end", "2",
            "--chunk-bits", "2", "--candidates", "8"]
    sizes = []
    for s in range(3):
        r = CliRunner().invoke(main, base + ["-q", "-o", str(tmp_path / f"s{s}.ddpm"), "--seed", str(s)])
        assert r.exit_code == 0, r.output
        sizes.append((tmp_path / f"s{s}.ddpm").read_bytes())
    r = CliRunner().invoke(main, base + ["-o", str(tmp_path / "e.ddpm"), "--effort", "3"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "e.ddpm").read_bytes() == min(sizes, key=len)
    kept = sizes.index(min(sizes, key=len))
    assert f"kept seed {kept} of 3 tried (0 to 2)" in r.output and r.output.count("|      999 |") == 1   # t_end = 2
    r = CliRunner().invoke(main, base + ["-o", str(tmp_path / "bad.ddpm"), "--effort", "0"])
    assert r.exit_code == 2 and not (tmp_path / "bad.ddpm").exists()
