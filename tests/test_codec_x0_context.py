"""x_0 coded by a model's learned context model (profiles 11 and 12, ``x0_context=1``) inside real files:
round trips in float and exact arithmetic, the fingerprint that covers both models, clear refusals
when the decoder's model lacks that context model, lossy files unchanged, damaged x_0 data reaching
the pass-by-pass decoder, and the config entry that ships a context model with a saved model."""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from ddpm_codec import codec
from ddpm_codec.coding import container, entropy
from ddpm_codec.models.checkpoint import (
    add_x0_context,
    fresh_model,
    load_model,
    save_model,
    with_stats,
    with_x0_context,
)
from ddpm_codec.models.presets import get_preset
from ddpm_codec.models.x0_context import ContextConfig, ContextX0Net, context_hash

# profile 11's and 12's x_0 stage on a short chain (tau 2, as the context models below are made for)
FLOAT = replace(codec.PROFILES[11], num_steps=8, t_end=2, log2_candidates=8, chunk_bits=2, reuse_bits=0)
EXACT = replace(FLOAT, exact=1)
MSE = np.concatenate([[0.0], np.geomspace(3e-4, 0.3, 1000)])


def _images(n: int, seed: int = 0, h: int = 32, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = np.kron(rng.normal(size=(4, 4, 3)), np.ones((h // 4 + 1, w // 4 + 1, 1)))[:h, :w]
        out.append(np.clip(128 + 50 * low + rng.normal(scale=6, size=(h, w, 3)), 0, 255).astype(np.uint8))
    return np.stack(out)


def _context_net(model, seed: int, zero: bool = False) -> ContextX0Net:
    """A context model for tau 2 whose Eq. 13 scale is the model's own (zero output: exactly Eq. 13);
    otherwise a random, non-trivial output layer."""
    scale = float(model.diffusion.decoder_scale(2, "fitted", torch.zeros(1)))
    torch.manual_seed(seed)
    net = ContextX0Net(ContextConfig(channels=8, blocks=1, scale=scale, tau=2))
    if not zero:
        with torch.no_grad():
            net.out.weight.normal_(0.0, 0.05)
            net.out.bias.normal_(0.0, 0.05)
    return net.eval()


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return with_stats(fresh_model(get_preset("tiny")), MSE)


@pytest.fixture(scope="module")
def model(base):
    return with_x0_context(base, _context_net(base, 1))


@pytest.mark.parametrize("settings", [FLOAT, EXACT], ids=["float", "exact"])
def test_context_x0_round_trips_and_names_both_models(model, settings):
    for img in (_images(1, 3)[0], _images(1, 4, h=37, w=45)[0]):   # one tile; four partial tiles
        res = codec.encode(img, model, settings=settings)
        parsed, got = codec.read_header(res.data)
        assert got == settings and got.x0_context == 1
        assert parsed.file.header.schedule.variance_kind & 0x08
        # the file names the model together with its context model: sha256("<fingerprint>:<context hash>")
        both = hashlib.sha256(f"{model.fingerprint}:{context_hash(model.x0_context)}".encode()).hexdigest()
        # format 5: its first byte, and the checksums keyed by its first 8 bytes
        from ddpm_codec.codec.api import crc_key

        assert parsed.version == 5 and parsed.file.header.fingerprint.hex() == both[:2]
        assert crc_key(model, settings) == bytes.fromhex(both[:16]) != bytes.fromhex(model.fingerprint[:16])
        assert res.x0_side_bits == 0 and res.x0_bits > 0
        dec = codec.decode(res.data, model)
        assert dec.lossless and np.array_equal(dec.image, img)


def test_the_context_coder_costs_its_ideal_code_length(base):
    """With a sensible x_hat_0 (the image plus noise), the stream's x_0 part costs the context model's
    ideal code length (float discretized Gaussians) plus at most 1 % and a few words of slack."""
    import constriction

    from ddpm_codec.codec.x0 import ContextX0Code

    img = _images(2, 11)
    pix = np.ascontiguousarray(img.transpose(0, 3, 1, 2))
    g = torch.Generator().manual_seed(0)
    xhat = torch.from_numpy(pix / 127.5 - 1.0) + 0.02 * torch.randn(pix.shape, generator=g, dtype=torch.float64)
    xt = xhat + 0.05 * torch.randn(pix.shape, generator=g, dtype=torch.float64)
    net = _context_net(base, 12)
    mask = np.ones(pix.shape, bool)
    for exact in (False, True):
        ctx = with_x0_context(base, net).x0_context_coder(exact)
        code = ContextX0Code(ctx, pix, xt, xhat, mask)
        enc = constriction.stream.queue.RangeEncoder()
        code.write(enc)
        ideal = code.ideal_bits()
        assert 2 * 3 * 32 * 32 < ideal < 2 * 3 * 32 * 32 * 8          # between 1 and 8 bits a subpixel
        assert ideal - 1 <= enc.num_bits() <= 1.01 * ideal + 64
    # the output is relative to Eq. 13: a zero output layer costs exactly the model's own discretized
    # Gaussian at x_hat_0 with the fitted scale (entropy.ideal_bits, an independent implementation)
    zero = ContextX0Code(with_x0_context(base, _context_net(base, 2, zero=True)).x0_context_coder(False), pix, xt,
                         xhat, mask)
    zero.write(constriction.stream.queue.RangeEncoder())
    scale = float(base.diffusion.decoder_scale(2, "fitted", torch.zeros(1)))
    eq13 = entropy.ideal_bits(pix, xhat.numpy(), np.full(pix.shape, scale))
    assert zero.ideal_bits() == pytest.approx(eq13, rel=1e-6)


def test_a_model_without_that_context_model_is_refused(model, base):
    img = _images(1, 6)[0]
    data = codec.encode(img, model, settings=FLOAT).data
    with pytest.raises(codec.DecodeError, match="context model"):
        codec.decode(data, base)                                       # no context model at all
    other = with_x0_context(base, _context_net(base, 7))               # another context model
    with pytest.raises(codec.DecodeError, match="encoded with model"):
        codec.decode(data, other)
    with pytest.raises(ValueError, match="has none"):
        codec.encode(img, base, settings=FLOAT)
    with pytest.raises(ValueError, match="tau 2"):                      # made for tau 2, chain ends at 1
        codec.encode(img, model, settings=replace(FLOAT, t_end=1))
    # files without the context model still decode with a model that has one (its own fingerprint)
    plain = replace(FLOAT, x0_context=0)
    assert np.array_equal(codec.decode(codec.encode(img, base, settings=plain).data, model).image, img)


def test_lossy_files_are_the_same_bits_with_or_without_the_context_model(model):
    """x0_context changes only the lossless x_0 stage: a lossy file's segments are byte for byte those
    of the same chain without it (only the fingerprint and the schedule's variance byte differ)."""
    img = _images(1, 8)[0]
    a = codec.encode(img, model, settings=FLOAT, max_reverse_time=990)
    b = codec.encode(img, model, settings=replace(FLOAT, x0_context=0), max_reverse_time=990)
    fa, fb = container.unpack(a.data).file, container.unpack(b.data).file
    assert not fa.header.lossless and [s.payload for s in fa.segments] == [s.payload for s in fb.segments]
    assert len(a.data) == len(b.data)
    assert np.array_equal(codec.decode(a.data, model).image, codec.decode(b.data, model).image)


def test_damaged_x0_data_with_repaired_checksums_never_decodes_to_a_wrong_image(model):
    """Bytes of the last segment (which ends with x_0) changed and the file re-packed, so every CRC is
    right again: the pass-by-pass decoder runs on the damaged data and the outcome is a clean error
    or the exact image (a change past the last symbol read), never other pixels called lossless."""
    img = _images(1, 9)[0]
    data = codec.encode(img, model, settings=FLOAT, format_version=2).data   # its CRCs can be repaired
    f = container.unpack(data).file
    last = f.segments[-1].payload
    rng = random.Random(0)
    errors = 0
    for _ in range(12):
        bad = bytearray(last)
        pos = rng.randrange(max(0, len(bad) - 400), len(bad))   # inside the x_0 part
        bad[pos] ^= rng.randrange(1, 256)
        forged = container.pack(replace(f, segments=f.segments[:-1] + [replace(f.segments[-1], payload=bytes(bad))]))
        try:
            dec = codec.decode(forged, model)
        except (container.DdpmFormatError, codec.DecodeError):
            errors += 1
            continue
        assert not dec.lossless or np.array_equal(dec.image, img)
    assert errors >= 10


def test_a_saved_model_ships_its_context_model(base, tmp_path):
    """add_x0_context writes fp16 weights beside the model and names them, with their hash, in its config;
    loading checks the hash; the model's own fingerprint (its older files) does not change."""
    path = save_model(tmp_path / "m.safetensors", base.net, base.config)
    own = load_model(path).fingerprint
    net = _context_net(base, 3)
    wpath = add_x0_context(path, net)
    assert wpath == tmp_path / "x0-context" / "m-tau2.safetensors" and wpath.exists()
    loaded = load_model(path)
    assert loaded.fingerprint == own and loaded.x0_context is not None
    assert loaded.context_fingerprint == with_x0_context(base, net).context_fingerprint
    img = _images(1, 10)[0]
    assert np.array_equal(codec.decode(codec.encode(img, loaded, settings=FLOAT).data, loaded).image, img)
    # a context file that does not match the hash in the config, or a missing one: clear errors
    cfg = json.loads(path.with_suffix(".json").read_text())
    cfg["x0_context"]["hash"] = "0" * 64
    path.with_suffix(".json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match the hash"):
        load_model(path)
    wpath.unlink()
    with pytest.raises(FileNotFoundError, match="which is missing"):
        load_model(path)


def test_x0_context_travels_in_an_explicit_schedule_and_excludes_side_information():
    s = replace(codec.PROFILES[11], rate_percent=107)        # not a profile: an explicit schedule
    sch = s.to_schedule()
    assert sch.variance_kind == 1 | 0x08                     # fitted, bit 3: the context model
    assert codec.CodecSettings.from_schedule(sch) == s
    with pytest.raises(ValueError, match="x0_context"):
        replace(s, x0_scale_bits=4)
    assert codec.x0_model_fields("context") == dict(x0_scale_bits=0, x0_channel_bits=0, x0_neighbours=0,
                                                   x0_context=1)


def test_the_default_profile_follows_the_model(model, base):
    """Profile 13 (exact) for a model with a context model; 14 (exact, side information) for one
    without, so that a user's own model encodes with no options, portably; their float twins (11, 9)
    only for a model exact arithmetic cannot run (a cosine schedule is built with libm)."""
    assert codec.default_profile(model) == 13 and codec.default_profile(base) == 14
    assert codec.default_settings(model).x0_context == 1 and codec.default_settings(base).x0_context == 0
    assert codec.default_settings(model).arithmetic.exact and codec.default_settings(base).arithmetic.exact
    assert codec.settings_with(model=base, rate_percent=107) == replace(codec.PROFILES[14], rate_percent=107)
    cosine = replace(base, config={**base.config, "diffusion": {**base.config.get("diffusion", {}),
                                                                 "schedule": "cosine"}})
    assert codec.default_profile(cosine) == 9
    assert codec.settings_with(11, model=base) == codec.PROFILES[11]   # named: as named (then refused on use)


def test_the_context_models_calls_count_as_network_time(model, monkeypatch):
    """The seconds the coders spend in the context model go into the network seconds that encode and
    decode report, with the U-Net's: on a clock that only the context model's 12 passes advance
    (40 ms each), the reported network time is exactly theirs."""
    import types

    from ddpm_codec.codec import chain

    inner = model.x0_context_coder(False)
    clock = [0.0]
    calls = []

    def slow(*args):
        calls.append(1)
        clock[0] += 0.04
        return inner(*args)

    img = _images(1, 3)[0]
    fast = codec.encode(img, model, settings=FLOAT)
    monkeypatch.setattr(chain, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(model, "x0_context_coder", lambda exact: slow)
    res = codec.encode(img, model, settings=FLOAT)
    assert res.data == fast.data and len(calls) == 12
    assert res.network_seconds == pytest.approx(12 * 0.04)
    dec = codec.decode(res.data, model)
    assert dec.lossless and np.array_equal(dec.image, img) and len(calls) == 24
    assert dec.network_seconds == pytest.approx(12 * 0.04)


def test_tiles_go_through_the_context_model_in_pieces(model, monkeypatch):
    """Large images send their tiles through both networks in pieces (bounded memory): an exact
    file is the same bytes whatever the piece size, and files round-trip with pieces of 2 tiles."""
    from ddpm_codec.codec import chain

    img = _images(1, 5, h=37, w=45)[0]                  # four partial tiles
    whole = codec.encode(img, model, settings=EXACT).data
    monkeypatch.setattr(chain, "TILES_PER_CALL", 2)
    assert codec.encode(img, model, settings=EXACT).data == whole
    for settings in (EXACT, FLOAT):
        res = codec.encode(img, model, settings=settings)
        dec = codec.decode(res.data, model)
        assert dec.lossless and np.array_equal(dec.image, img)
