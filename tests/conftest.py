import os
import sys
from pathlib import Path

from hypothesis import settings

# The naive reference implementation lives beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

# CI replays the same examples every run; locally hypothesis explores new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
