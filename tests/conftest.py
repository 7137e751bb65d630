import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# The naive reference implementation lives beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

# CI replays the same examples every run; locally hypothesis explores new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread avoids oversubscribing a 2-core machine (10–50× faster under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
