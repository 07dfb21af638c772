"""Fixtures of the LoRA tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models run fastest on one thread, and a shared machine's other load makes two
    # OpenMP threads spin against each other (10x slower steps).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
