"""Fixtures shared by the test files."""

import pytest

from helpers import OracleEps


@pytest.fixture
def oracle_eps():
    return OracleEps
