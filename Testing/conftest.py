"""Suite-wide settings."""
import pytest
import torch

# fixtures of the tests on Slicer's real MRML classes (harness, slicer, core_run)
from mrml_fixtures import core_run, harness, slicer  # noqa: F401


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The tests' tensors are small: threads gain nothing, and on a shared 2-core
    # machine OpenMP barriers make every small op wait for a descheduled thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
