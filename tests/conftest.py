"""Suite-wide settings: two threads (CI has 2 cores), one in the folders of ``ONE_THREAD``, and a
fixed seed before every test.

Shared tiny model configurations live in model_helpers.py (``from model_helpers import ...``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

HERE = Path(__file__).resolve().parent
# Tiny models run fastest on one thread, and a shared machine's other load makes two OpenMP
# threads spin against each other (10x slower steps): these folders' tests run on one.
ONE_THREAD = ("dpo", "evaluation", "grpo", "lora", "trainer")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _threads(request):
    path = Path(request.node.path).resolve()
    if not any(HERE / folder in path.parents for folder in ONE_THREAD):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
