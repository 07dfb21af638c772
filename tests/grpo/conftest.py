"""Fixtures of the GRPO tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models run fastest on one thread; on a shared machine two OpenMP threads spin
    # against the other load.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
