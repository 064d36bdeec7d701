"""U-Net shapes and size, presets, and model files (safetensors + JSON, fingerprint)."""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch

from ddpm_codec.models.checkpoint import (fingerprint, fresh_model, load_model, round_weights_to_half, save_model,
                                         with_stats)
from ddpm_codec.models.presets import PRESETS, get_preset
from ddpm_codec.models.unet import UNet, UNetConfig, count_parameters, timestep_embedding




def _small_net(seed: int = 0, **overrides) -> UNet:
    torch.manual_seed(seed)
    net = UNet(get_preset("tiny", **{"image_size": 8, **overrides})).eval()
    # the output and residual convolutions start at zero; randomise so round trips mean something
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def test_unet_output_shape_and_dependence_on_t():
    torch.manual_seed(0)
    for cfg in (get_preset("tiny"), get_preset("tiny", image_size=16), get_preset("tiny", image_size=8)):
        net = _small_net(**{"image_size": cfg.image_size})
        x = torch.randn(3, 3, cfg.image_size, cfg.image_size)
        out = net(x, torch.tensor([1, 500, 1000]))
        assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
        # the time embedding reaches the output
        out2 = net(x, torch.tensor([2, 501, 999]))
        assert not torch.allclose(out, out2)
    with pytest.raises(ValueError, match="8x8"):
        _small_net()(torch.randn(1, 3, 16, 16), torch.tensor([1]))


def test_timestep_embedding_is_sinusoidal():
    t = torch.tensor([0, 1, 37])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (3, 8)
    freqs = [10000 ** (-i / 3) for i in range(4)]
    for row, tv in zip(emb.tolist(), t.tolist()):
        want = [math.sin(tv * f) for f in freqs] + [math.cos(tv * f) for f in freqs]
        assert row == pytest.approx(want, abs=1e-5)


def test_paper_model_has_35_7m_parameters():
    with torch.device("meta"):
        n = count_parameters(UNet(PRESETS["ddpm-cifar10"]))
    assert abs(n - 35.7e6) / 35.7e6 < 0.01, n
    # the other presets are strictly smaller, in the listed order
    sizes = []
    for name in PRESETS:
        with torch.device("meta"):
            sizes.append(count_parameters(UNet(PRESETS[name])))
    assert sizes == sorted(sizes, reverse=True)


def test_presets_and_config_dict():
    with pytest.raises(ValueError, match="nope"):
        get_preset("nope")
    cfg = get_preset("cpu-small", image_size=16, dropout=None)
    assert cfg.image_size == 16 and cfg.dropout == PRESETS["cpu-small"].dropout
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="bogus"):
        UNetConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_save_load_round_trip_fp32_exact(tmp_path):
    net = _small_net()
    path = save_model(tmp_path / "m", net, {"card": {"note": "test"}})
    assert path.name == "m.safetensors" and (tmp_path / "m.json").exists()
    m = load_model(tmp_path / "m.safetensors")
    sd, sd2 = net.state_dict(), m.net.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 900])
    assert torch.equal(net(x, t), m.net(x, t))
    assert m.config["card"]["note"] == "test" and m.config["unet"] == net.config.to_dict()
    assert m.image_size == 8 and m.name == "m"
    # the JSON path and the bare stem resolve to the same files
    assert load_model(tmp_path / "m.json").fingerprint == m.fingerprint == load_model(tmp_path / "m").fingerprint


def test_save_load_round_trip_fp16_close(tmp_path):
    net = _small_net()
    save_model(tmp_path / "h.safetensors", net, {}, dtype=torch.float16)
    assert json.loads((tmp_path / "h.json").read_text())["weights_dtype"] == "float16"
    assert (tmp_path / "h.safetensors").stat().st_size < 0.6 * 4 * count_parameters(net)
    m = load_model(tmp_path / "h.safetensors")
    for k, v in net.state_dict().items():
        w = m.net.state_dict()[k]
        assert w.dtype == torch.float32
        torch.testing.assert_close(w, v, rtol=1e-3, atol=1e-4)
        assert torch.equal(w, v.half().float()), k


def test_fingerprint_stable_and_sensitive(tmp_path):
    net = _small_net()
    save_model(tmp_path / "a.safetensors", net, {})
    fp1 = load_model(tmp_path / "a.safetensors").fingerprint
    fp2 = load_model(tmp_path / "a.safetensors").fingerprint
    assert fp1 == fp2 == json.loads((tmp_path / "a.json").read_text())["fingerprint"]
    assert len(fp1) == 64 and int(fp1, 16) >= 0
    # re-saving the loaded model gives the same fingerprint
    m = load_model(tmp_path / "a.safetensors")
    save_model(tmp_path / "b.safetensors", m.net, {"diffusion": m.config["diffusion"]})
    assert load_model(tmp_path / "b.safetensors").fingerprint == fp1
    # the card is not decode-relevant
    save_model(tmp_path / "c.safetensors", net, {"card": {"anything": 1}})
    assert load_model(tmp_path / "c.safetensors").fingerprint == fp1
    # one weight changed by one ulp
    net2 = _small_net()
    with torch.no_grad():
        p = next(net2.parameters())
        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(1e9))
    save_model(tmp_path / "d.safetensors", net2, {})
    assert load_model(tmp_path / "d.safetensors").fingerprint != fp1
    # the diffusion schedule changed
    save_model(tmp_path / "e.safetensors", net, {"diffusion": {"schedule": "linear", "num_timesteps": 1000,
                                                              "beta_start": 1e-4, "beta_end": 0.021}})
    assert load_model(tmp_path / "e.safetensors").fingerprint != fp1
    # the U-Net config changed (dropout does not change any weight shape)
    net3 = _small_net(dropout=0.3)
    assert net3.state_dict().keys() == net.state_dict().keys()
    save_model(tmp_path / "f.safetensors", net3, {})
    assert load_model(tmp_path / "f.safetensors").fingerprint != fp1
    # fp16 storage fingerprints differently from fp32
    save_model(tmp_path / "g.safetensors", net, {}, dtype=torch.float16)
    assert load_model(tmp_path / "g.safetensors").fingerprint != fp1
    # stats change it
    m = load_model(tmp_path / "a.safetensors")
    assert with_stats(m, [0.0] + [0.1] * 1000).fingerprint != fp1
    assert fresh_model(get_preset("tiny", image_size=8)).fingerprint != fp1
    # the function itself: independent of dict insertion order
    sd = net.state_dict()
    cfg = {"unet": net.config.to_dict(), "diffusion": {"b": 1, "a": 2}}
    assert fingerprint(cfg, sd) == fingerprint({"diffusion": {"a": 2, "b": 1}, "unet": cfg["unet"]},
                                               dict(reversed(list(sd.items()))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_with_stats_fingerprint_matches_the_saved_file(tmp_path, dtype):
    """Calibrating a loaded model in memory gives the fingerprint its saved file will have."""
    save_model(tmp_path / "m.safetensors", _small_net(), {}, dtype=dtype)
    m = load_model(tmp_path / "m.safetensors")
    cal = with_stats(m, [0.0] + [0.01] * 1000)
    assert cal.diffusion.x0_mse is not None and cal.fingerprint != m.fingerprint
    save_model(tmp_path / "cal.safetensors", cal.net, cal.config, dtype=dtype)
    back = load_model(tmp_path / "cal.safetensors")
    assert back.fingerprint == cal.fingerprint
    assert back.config["stats"]["x0_mse"] == cal.config["stats"]["x0_mse"]
    # the denoise statistics travel too, and are part of the fingerprint
    lam = np.linspace(1, 0, 1001)
    cal2 = with_stats(m, [0.0] + [0.01] * 1000, lam, [0.1, 0.2, 0.3])
    assert cal2.fingerprint != cal.fingerprint
    save_model(tmp_path / "cal2.safetensors", cal2.net, cal2.config, dtype=dtype)
    back2 = load_model(tmp_path / "cal2.safetensors")
    assert back2.fingerprint == cal2.fingerprint
    np.testing.assert_array_equal(back2.diffusion.x0_shrink, lam)
    np.testing.assert_array_equal(back2.diffusion.data_mean, [0.1, 0.2, 0.3])


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("payload", ["empty", "garbage", "pickle", "torch_save", "bad_header"])
def test_loading_garbage_raises_value_error_and_never_unpickles(tmp_path, payload, monkeypatch):
    net = _small_net()
    save_model(tmp_path / "ok.safetensors", net, {})
    w = tmp_path / "x.safetensors"
    if payload == "empty":
        w.write_bytes(b"")
    elif payload == "garbage":
        w.write_bytes(os.urandom(4096))
    elif payload == "pickle":
        w.write_bytes(pickle.dumps(_Evil()))
    elif payload == "torch_save":
        torch.save({"x": _Evil()}, w)
    else:
        w.write_bytes(struct.pack("<Q", 7) + b"{nope}")
    shutil.copy(tmp_path / "ok.json", tmp_path / "x.json")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    with pytest.raises(ValueError):
        load_model(w)
    assert not (tmp_path / "PWNED").exists()


def test_bad_config_json_raises(tmp_path):
    net = _small_net()
    save_model(tmp_path / "m.safetensors", net, {})
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ValueError, match="config"):
        load_model(tmp_path / "m.safetensors")
    (tmp_path / "m.json").write_text(json.dumps({"diffusion": {}}))
    with pytest.raises(ValueError):
        load_model(tmp_path / "m.safetensors")


def test_mismatched_config_raises(tmp_path):
    net = _small_net()
    save_model(tmp_path / "m.safetensors", net, {})
    cfg = json.loads((tmp_path / "m.json").read_text())
    for change in ({"ch": 32}, {"ch_mult": [1, 2, 2]}, {"num_res_blocks": 2}, {"attn_resolutions": [4]},
                   {"frobnicate": True}):
        bad = dict(cfg, unet={**cfg["unet"], **change})
        (tmp_path / "m.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError):
            load_model(tmp_path / "m.safetensors")


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "none.safetensors")
    save_model(tmp_path / "m.safetensors", _small_net(), {})
    (tmp_path / "m.json").unlink()
    with pytest.raises(FileNotFoundError, match="m.json"):
        load_model(tmp_path / "m.safetensors")


def test_eval_eps_matches_eps_and_leaves_the_codec_network_alone():
    torch.manual_seed(0)
    m = fresh_model(get_preset("tiny"))
    with torch.no_grad():   # a fresh U-Net's output layer is zero: give every weight a value
        for p in m.net.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor([1, 500, 1000])
    before = m.eps(x, t)
    assert before.abs().mean() > 0.1
    fast = m.eval_eps()(x, t)
    torch.testing.assert_close(fast, before, rtol=1e-4, atol=1e-5)
    assert torch.equal(m.eps(x, t), before)   # bit-identical: the codec's network is untouched


def test_round_weights_to_half_makes_every_value_a_float16_and_is_idempotent(tmp_path):
    net = _small_net(3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert any(not torch.equal(v, v.half().float()) for v in before.values())   # something to round
    assert round_weights_to_half(net) is net
    after = {k: v.clone() for k, v in net.state_dict().items()}
    for k, v in after.items():
        assert v.dtype == before[k].dtype
        # exactly representable in float16: the round trip through float16 changes nothing ...
        assert torch.equal(v.half().float(), v), k
        # ... and it is the nearest float16 value: neither float16 neighbour is closer to the original
        b, h = before[k].double(), v.half()
        for toward in (math.inf, -math.inf):
            nb = torch.nextafter(h, torch.full_like(h, toward)).double()
            assert torch.all((v.double() - b).abs() <= (nb - b).abs()), k
    round_weights_to_half(net)
    for k, v in net.state_dict().items():
        assert torch.equal(v, after[k]), k
    # a float16 file of the rounded network loads back to exactly these weights
    path = save_model(tmp_path / "h.safetensors", net, {}, dtype=torch.float16)
    for k, v in load_model(path).net.state_dict().items():
        assert torch.equal(v, after[k]), k
