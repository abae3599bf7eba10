import pytest
import torch

from harness.core.config import ConfigError
from harness.core.runtime import resolve_device


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("harness.core.runtime._mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr("harness.core.runtime._mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_unavailable_device_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("harness.core.runtime._mps_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        resolve_device("cuda")
    assert str(err.value) == "device: 'cuda' is not available on this machine; available: auto, cpu"


def test_cpu_is_always_there():
    assert resolve_device("cpu") == torch.device("cpu")
