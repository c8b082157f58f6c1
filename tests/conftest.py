"""Fixtures shared by the test files."""

import pytest
import torch

from ddpm_lib.oracles import PointOracle


@pytest.fixture
def oracle_eps():
    return PointOracle


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one CPU thread: for tiny models, on a shared 2-core machine,
    thread contention costs more than it saves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
