"""Suite-wide settings."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The tests' tensors are small: threads gain nothing, and on a shared 2-core
    # machine OpenMP barriers make every small op wait for a descheduled thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
