import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny tensors, and a 2-core machine that is often shared (spin-waits)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
