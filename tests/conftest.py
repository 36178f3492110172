import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: heavier tests, run on demand with `pytest -m slow`")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
