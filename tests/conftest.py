"""Every test starts from the same state, whatever ran before it on its worker: under xdist a test's neighbours depend
on how the tests were spread, so a test that draws from torch's (or Python's, or NumPy's) global generator must not
see what an earlier test left there. The course's tensors are tiny, so every test also runs on one intra-op thread
(faster, and immune to OpenMP stalls on a busy CI machine); a test that needs more threads sets them itself."""

import pytest
import torch

from dslab.runtime import seed_everything


@pytest.fixture(autouse=True)
def _seeded_one_thread():
    seed_everything(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
