import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny tensors, and a 2-core machine that is often shared (spin-waits)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def example_file():
    """CIFAR-10 test image 7 from the shipped sample and its lossless file (shipped model, default
    profile), coded once per test session: ``(image, data)``."""
    import ddpm_codec as dc
    from ddpm_codec.data import example_image

    image = example_image(7)
    return image, dc.encode(image).data
