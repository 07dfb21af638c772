"""Suite-wide settings: two threads (CI has 2 cores) and a fixed seed before every test.

Shared tiny model configurations live in model_helpers.py (``from model_helpers import ...``).
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
