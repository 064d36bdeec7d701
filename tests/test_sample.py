"""Sampling (Algorithm 2): shapes, dtype, seeds, progressive output."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_codec.diffusion import GaussianDiffusion, make_betas
from ddpm_codec.models.presets import get_preset
from ddpm_codec.models.unet import UNet
from ddpm_codec.sample import sample_images

SIZE = 8




@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = UNet(get_preset("tiny", image_size=SIZE)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


@pytest.fixture(scope="module")
def diff():
    return GaussianDiffusion(make_betas("linear", 1000))


def test_shapes_and_dtype(net, diff):
    x = sample_images(net, diff, 3, image_size=SIZE, steps=6)
    assert x.shape == (3, SIZE, SIZE, 3) and x.dtype == np.uint8
    assert len(np.unique(x)) > 10          # not a constant image


def test_reproducible_with_seed(net, diff):
    a = sample_images(net, diff, 2, image_size=SIZE, steps=5, seed=7)
    b = sample_images(net, diff, 2, image_size=SIZE, steps=5, seed=7)
    c = sample_images(net, diff, 2, image_size=SIZE, steps=5, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for kind in ("fixedsmall", "fixedlarge"):
        np.testing.assert_array_equal(sample_images(net, diff, 2, image_size=SIZE, steps=4, seed=3, variance=kind),
                                      sample_images(net, diff, 2, image_size=SIZE, steps=4, seed=3, variance=kind))


def test_progressive(net, diff):
    final, strip = sample_images(net, diff, 3, image_size=SIZE, steps=7, seed=1, progressive=4, batch_size=2)
    assert final.shape == (3, SIZE, SIZE, 3) and final.dtype == np.uint8
    assert strip.shape == (3, 4, SIZE, SIZE, 3) and strip.dtype == np.uint8
    np.testing.assert_array_equal(strip[:, -1], final)      # the last snapshot is the sample
    assert not np.array_equal(strip[:, 0], strip[:, -1])
    # progressive output does not change the samples themselves
    np.testing.assert_array_equal(final, sample_images(net, diff, 3, image_size=SIZE, steps=7, seed=1, batch_size=2))


def test_zero_network_gives_the_posterior_of_zero_noise(diff):
    """With eps_theta = 0 the final step outputs x_hat_0 = x_1 / sqrt(abar_1) (clipped); a
    single-step chain from T therefore outputs clip(x_T / sqrt(abar_T)), computable by hand."""
    zero = lambda x, t: torch.zeros_like(x)      # noqa: E731
    x = sample_images(zero, diff, 2, image_size=4, steps=1, seed=5)
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn((2, 3, 4, 4), generator=g, dtype=torch.float64)
    abar_T = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(1000))
    want = torch.round((torch.clamp(x_T / math.sqrt(abar_T), -1, 1) + 1) * 127.5).to(torch.uint8)
    np.testing.assert_array_equal(x, want.permute(0, 2, 3, 1).numpy())


def test_cli_single_sample_is_the_image_itself(tmp_path):
    """`sample -n 1` writes one image at the model's size (no grid border), ready to encode."""
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from ddpm_codec.cli.main import main
    from ddpm_codec.models.checkpoint import fresh_model, save_model
    from ddpm_codec.models.presets import get_preset

    m = fresh_model(get_preset("tiny"))
    path = save_model(tmp_path / "m.safetensors", m.net, m.config)
    r = CliRunner().invoke(main, ["sample", "--model", str(path), "-n", "1", "--steps", "3", "-o", str(tmp_path / "one.png")])
    assert r.exit_code == 0, r.output
    assert np.asarray(Image.open(tmp_path / "one.png")).shape == (32, 32, 3)
