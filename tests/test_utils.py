"""Tests for ddpm_lib.utils: device choice and seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ddpm_lib.utils import get_device, seed_everything


@pytest.fixture
def no_accelerator(monkeypatch):
    """Pretend neither CUDA nor MPS exists and DDPM_DEVICE is unset."""
    monkeypatch.delenv("DDPM_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend CUDA exists (nothing is allocated, so no GPU is needed) and DDPM_DEVICE is unset."""
    monkeypatch.delenv("DDPM_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_get_device_falls_back_to_cpu_without_accelerators(no_accelerator):
    assert get_device() == torch.device("cpu")


def test_get_device_prefers_cuda_when_available(fake_cuda):
    assert get_device() == torch.device("cuda")


def test_get_device_cuda_unavailable_raises_runtime_error_naming_available(no_accelerator):
    with pytest.raises(RuntimeError, match=r"'cuda'.*not available.*available: cpu"):
        get_device("cuda")


def test_get_device_unknown_name_raises_value_error(no_accelerator):
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        get_device("tpu")


def test_get_device_honours_ddpm_device_env(fake_cuda, monkeypatch):
    monkeypatch.setenv("DDPM_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_get_device_validates_ddpm_device_env(no_accelerator, monkeypatch):
    monkeypatch.setenv("DDPM_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="available: cpu"):
        get_device()


def test_get_device_argument_wins_over_env(fake_cuda, monkeypatch):
    monkeypatch.setenv("DDPM_DEVICE", "cuda")
    assert get_device("cpu") == torch.device("cpu")


def test_seed_everything_makes_torch_randn_reproducible():
    seed_everything(123)
    a = torch.randn(5)
    seed_everything(123)
    assert torch.equal(torch.randn(5), a)


def test_seed_everything_seeds_python_and_numpy():
    # The legacy global NumPy RNG is exactly what seed_everything seeds.
    seed_everything(7)
    first = (random.random(), np.random.rand())  # noqa: NPY002
    seed_everything(7)
    assert (random.random(), np.random.rand()) == first  # noqa: NPY002


def test_seed_everything_returns_a_generator_seeded_alike():
    g = seed_everything(42)
    assert isinstance(g, torch.Generator)
    assert g.initial_seed() == 42
    assert torch.equal(torch.randn(4, generator=g), torch.randn(4, generator=torch.manual_seed(42)))


def test_seed_everything_rejects_negative_seed():
    with pytest.raises(ValueError, match="non-negative"):
        seed_everything(-1)
