"""Test settings shared by every test module: quiet, seeded, no fork. Shared models live in ``helpers.py``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _quiet_and_deterministic() -> Iterator[None]:
    torch.manual_seed(0)
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        yield
