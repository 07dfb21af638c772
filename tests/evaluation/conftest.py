"""Fixtures of the evaluation tests (helpers live in eval_helpers.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models run fastest on one thread, and a shared machine's other load makes two OpenMP
    # threads spin against each other (10x slower forwards; see tests/trainer/conftest.py).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
