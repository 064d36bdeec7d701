"""diffusers DDPM folders (google/ddpm-cifar10-32 layout) through ``--model`` (models/diffusers_import.py).

No hub: a small randomly initialised ``diffusers.UNet2DModel`` with the paper's block layout (fewer
channels) is saved with ``save_pretrained`` in both folder layouts, loaded through
``resolve_model`` and compared with diffusers' own forward pass; then imported with the CLI,
sampled from, and used for a lossless round trip. Skipped where diffusers is not installed
(it is in the ``dev`` extra).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install -e '.[dev]')")

from click.testing import CliRunner
from ddpm_codec.cli.main import main
from ddpm_codec.models.checkpoint import load_model, with_stats
from ddpm_codec.models.diffusers_import import (
    DiffusersImportError,
    diffusion_config_from_scheduler,
    is_diffusers_folder,
    unet_config_from_diffusers,
)
from ddpm_codec.models.registry import resolve_model
from ddpm_codec.models.unet import UNetConfig

from ddpm_codec import codec

# The paper's layout (google/ddpm-cifar10-32's config) with 32/64 channels instead of 128/256.
UNET_KW = {"sample_size": 32, "in_channels": 3, "out_channels": 3, "block_out_channels": (32, 64, 64, 64),
           "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
           "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
           "layers_per_block": 2, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
           "norm_eps": 1e-6, "norm_num_groups": 32, "attention_head_dim": None, "act_fn": "silu",
           "time_embedding_type": "positional", "mid_block_scale_factor": 1, "center_input_sample": False}
SCHED_KW = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
            "variance_type": "fixed_large", "clip_sample": True}
# paper times t (1..T); diffusers is given t - 1 (it counts 0..T-1)
TIMES = (1, 2, 501, 1000)
# float32, same operations in a different arrangement (one qkv conv vs three linears, SDPA vs
# einsum softmax): measured max |diff| ~4e-6 on outputs of size ~1, RMS ~6e-7
TOL_MAX, TOL_RMS = 1e-4, 1e-5


@pytest.fixture(scope="module")
def dunet():
    torch.manual_seed(0)
    u = diffusers.UNet2DModel(**UNET_KW).eval()
    with torch.no_grad():                 # diffusers zero-initialises nothing here, but make every
        for p in u.parameters():          # weight (GroupNorm affine included) non-trivial
            p.add_(0.05 * torch.randn_like(p))
    return u


@pytest.fixture(scope="module")
def folders(dunet, tmp_path_factory):
    """{"top": config.json + safetensors + scheduler_config.json; "pipeline": unet/ (.bin) + scheduler/}."""
    root = tmp_path_factory.mktemp("diffusers")
    top = root / "ddpm-top"
    dunet.save_pretrained(top)
    diffusers.DDPMScheduler(**SCHED_KW).save_pretrained(top)
    pipe = root / "ddpm-pipeline"
    dunet.save_pretrained(pipe / "unet", safe_serialization=False)
    diffusers.DDPMScheduler(**SCHED_KW).save_pretrained(pipe / "scheduler")
    assert (top / "diffusion_pytorch_model.safetensors").is_file()
    assert (pipe / "unet" / "diffusion_pytorch_model.bin").is_file()
    return {"top": top, "pipeline": pipe}


def _x(n=3, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", ["top", "pipeline"])
def test_eps_matches_diffusers(dunet, folders, layout):
    assert is_diffusers_folder(folders[layout])
    m = resolve_model(str(folders[layout]))
    cfg = m.net.config
    assert cfg.ch == 32 and cfg.ch_mult == (1, 2, 2, 2) and cfg.attn_resolutions == (16,)
    assert cfg.norm_eps == 1e-6 and cfg.down_padding == "tf" and cfg.time_offset == -1
    x = _x()
    for t in TIMES:
        with torch.no_grad():
            ref = dunet(x, torch.full((x.shape[0],), t - 1)).sample
        got = m.eps(x, t)
        d = (got - ref).abs()
        assert ref.abs().max() > 0.5                        # non-trivial outputs
        assert d.max() < TOL_MAX and d.pow(2).mean().sqrt() < TOL_RMS, (t, float(d.max()))
    # the tolerance is far below what a wrong convention costs (off-by-one time: ~5e-2)
    with torch.no_grad():
        off = dunet(x, torch.full((x.shape[0],), 500)).sample
    assert (m.eps(x, 500) - off).abs().max() > 100 * TOL_MAX


def test_schedule_from_scheduler_config(folders):
    m = resolve_model(str(folders["top"]))
    assert m.config["diffusion"] == {"schedule": "linear", "num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    sched = diffusers.DDPMScheduler(**SCHED_KW)
    # betas[t] for paper t = 1..T is diffusers' betas[t - 1]; diffusers computes them in float32, the
    # paper's code (and this project) in float64
    assert np.allclose(np.asarray(m.diffusion.betas)[1:], sched.betas.double().numpy(), rtol=0, atol=1e-8)
    assert diffusion_config_from_scheduler({"num_train_timesteps": 500, "beta_end": 0.03})["num_timesteps"] == 500


def test_both_layouts_and_bin_give_the_same_model(folders):
    a, b = (resolve_model(str(folders[k])) for k in ("top", "pipeline"))
    assert a.fingerprint == b.fingerprint


def test_old_attention_names_are_read(folders, tmp_path):
    """Checkpoints from before diffusers 0.15 (google/ddpm-cifar10-32's .bin among them) name the
    attention weights query/key/value/proj_attn; they map to the same model."""
    from safetensors.torch import load_file, save_file

    d = shutil.copytree(folders["top"], tmp_path / "old-names")
    w = d / "diffusion_pytorch_model.safetensors"
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for k, v in load_file(str(w)).items():
        for a, b in old.items():
            if ".attentions." in k and f".{a}." in k:
                k = k.replace(f".{a}.", f".{b}.")
        state[k] = v
    assert any(".proj_attn." in k for k in state)
    save_file(state, str(w))
    assert resolve_model(str(d)).fingerprint == resolve_model(str(folders["top"])).fingerprint

def test_cli_import_writes_a_fingerprinted_model(folders, tmp_path):
    out = tmp_path / "imported.safetensors"
    r = CliRunner().invoke(main, ["import", str(folders["top"]), "-o", str(out)])
    assert r.exit_code == 0, r.output
    cfg = json.loads(out.with_suffix(".json").read_text())
    direct = resolve_model(str(folders["top"]))
    assert cfg["fingerprint"] == direct.fingerprint and cfg["fingerprint"][:16] in r.output
    assert cfg["card"]["source"] == "diffusers" and cfg["unet"]["down_padding"] == "tf"
    loaded = load_model(out)                              # what --model PATH loads
    assert loaded.fingerprint == direct.fingerprint
    x = _x(2)
    assert torch.equal(loaded.eps(x, 77), direct.eps(x, 77))
    # stable: a second import writes the same fingerprint
    r2 = CliRunner().invoke(main, ["import", str(folders["pipeline"]), "-o", str(tmp_path / "again")])
    assert r2.exit_code == 0, r2.output
    assert json.loads((tmp_path / "again.json").read_text())["fingerprint"] == cfg["fingerprint"]
    # --model takes the folder as well as the converted file
    for spec in (str(folders["top"]), str(out)):
        r3 = CliRunner().invoke(main, ["sample", "--model", spec, "-n", "1", "--steps", "2",
                                       "-o", str(tmp_path / "s.png")])
        assert r3.exit_code == 0, r3.output


def _edited(src: Path, dst: Path, *, unet: dict | None = None, sched: dict | None = None) -> Path:
    shutil.copytree(src, dst)
    for name, upd in (("config.json", unet), ("scheduler_config.json", sched)):
        if upd:
            p = dst / name
            p.write_text(json.dumps({**json.loads(p.read_text()), **upd}))
    return dst


@pytest.mark.parametrize("unet,sched,words", [
    ({"down_block_types": ["DownBlock2D", "AttnSkipDownBlock2D", "DownBlock2D", "DownBlock2D"]}, None,
     "AttnSkipDownBlock2D"),
    ({"up_block_types": ["UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}, None, "CrossAttnUpBlock2D"),
    ({"flip_sin_to_cos": True}, None, "flip_sin_to_cos"),
    ({"attention_head_dim": 8}, None, "attention_head_dim"),
    ({"_class_name": "UNet2DConditionModel"}, None, "UNet2DConditionModel"),
    (None, {"variance_type": "learned_range"}, "learned_range"),
    (None, {"variance_type": "learned"}, "variance_type='learned'"),
    (None, {"prediction_type": "v_prediction"}, "v_prediction"),
    (None, {"beta_schedule": "squaredcos_cap_v2"}, "squaredcos_cap_v2"),
])
def test_unsupported_settings_are_refused_in_one_line(folders, tmp_path, unet, sched, words):
    d = _edited(folders["top"], tmp_path / "edited", unet=unet, sched=sched)
    with pytest.raises(DiffusersImportError) as e:
        resolve_model(str(d))
    assert words in str(e.value) and "\n" not in str(e.value)
    r = CliRunner().invoke(main, ["import", str(d), "-o", str(tmp_path / "x.safetensors")])
    assert r.exit_code != 0 and words in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_missing_files_are_refused(folders, tmp_path):
    d = shutil.copytree(folders["top"], tmp_path / "noweights")
    (d / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(DiffusersImportError, match="no weights"):
        resolve_model(str(d))
    d = shutil.copytree(folders["top"], tmp_path / "nosched")
    (d / "scheduler_config.json").unlink()
    with pytest.raises(DiffusersImportError, match="scheduler_config.json"):
        resolve_model(str(d))


class _NotATensor:
    pass


def test_bin_is_read_with_weights_only(folders, tmp_path):
    d = shutil.copytree(folders["pipeline"], tmp_path / "evil")
    torch.save({"conv_in.weight": _NotATensor()}, d / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(DiffusersImportError, match="weights_only=True"):
        resolve_model(str(d))


def test_config_mapping_of_the_paper_model():
    """google/ddpm-cifar10-32's config maps onto the ddpm-cifar10 preset's architecture."""
    from ddpm_codec.models.presets import PRESETS

    cfg = unet_config_from_diffusers({**UNET_KW, "block_out_channels": [128, 256, 256, 256], "dropout": 0.0})
    p = PRESETS["ddpm-cifar10"]
    for k in ("image_size", "in_channels", "ch", "ch_mult", "num_res_blocks", "attn_resolutions"):
        assert getattr(cfg, k) == getattr(p, k)
    # new fields at their defaults stay out of saved configs (existing fingerprints unchanged)
    assert set(UNetConfig().to_dict()) == {"image_size", "in_channels", "ch", "ch_mult", "num_res_blocks",
                                           "attn_resolutions", "dropout"}
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg


@pytest.fixture(scope="module")
def calibrated(folders):
    m = resolve_model(str(folders["top"]))
    # stand-in statistics (as tests/test_codec.py): x_hat_0 error growing with t
    return with_stats(m, np.concatenate([[0.0], np.geomspace(3e-4, 0.3, 1000)]))


def test_lossless_round_trip(calibrated):
    rng = np.random.default_rng(0)
    img = np.clip(128 + 40 * np.kron(rng.normal(size=(4, 4, 3)), np.ones((8, 8, 1)))
                  + rng.normal(scale=5, size=(32, 32, 3)), 0, 255).astype(np.uint8)
    settings = codec.settings_with(2, num_steps=6, t_end=2, chunk_bits=4, log2_candidates=8)
    res = codec.encode(img, calibrated, settings=settings)
    dec = codec.decode(res.data, calibrated)
    assert res.lossless and dec.lossless and np.array_equal(dec.image, img)


def test_sampling(calibrated):
    from ddpm_codec.sample import sample_images

    x = sample_images(calibrated.net, calibrated.diffusion, 2, steps=2, seed=3)
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.uint8


def test_exact_network_follows_the_imported_one(calibrated):
    """The exact-arithmetic network (profile 10) uses the same conventions (tf padding, time offset)."""
    from ddpm_codec.models.exact import ExactUNet

    ex = ExactUNet(calibrated.net)
    x = _x(1, seed=4)
    for t in (1, 1000):
        d = (ex(x, t) - calibrated.eps(x, t).double()).abs()
        assert d.max() < 2e-3 and d.pow(2).mean().sqrt() < 1e-4
