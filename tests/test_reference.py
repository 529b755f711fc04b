"""The stand-in models' training precision: bf16 only where it was measured to pay."""

import pytest
import torch

from router_training.reference import training_precision


def test_auto_precision_is_bf16_only_for_64_px_on_a_native_bf16_cpu(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert training_precision("auto", 64) == "bf16-mixed" and training_precision("auto", 32) == "32-true"
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert training_precision("auto", 64) == "32-true"  # emulated bf16 is slower
    assert training_precision("bf16-mixed", 32) == "bf16-mixed" and training_precision("32-true", 64) == "32-true"
    with pytest.raises(ValueError, match="precision must be 'auto', '32-true' or 'bf16-mixed'"):
        training_precision("16-mixed", 64)
