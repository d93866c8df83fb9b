"""bf16 autocast on the CPU (--cpu_amp): the step computes what the fp32 step computes, to bf16's
precision, and every run says whether it ran in bf16."""

import json

import pytest
import torch

from debiaslab.train import train
from tests.conftest import make_method, method_batches, method_state_of, tiny_bundle, tiny_config


@pytest.mark.parametrize("method_name", ["vanilla", "lff", "disent"])
def test_a_bf16_step_matches_the_fp32_step_within_bf16_precision(method_name):
    (fp32, targets), (bf16, _) = make_method(method_name), make_method(method_name, cpu_amp=True)
    assert not fp32.amp and bf16.amp
    x, y, idx = next(method_batches(targets, 1))
    before = method_state_of(fp32)
    out32, out16 = fp32.update(x, y, idx, 0), bf16.update(x, y, idx, 0)
    # the loss terms: bf16 keeps 8 bits of mantissa, ~0.4% relative
    assert torch.allclose(out16.values, out32.values, rtol=3e-2, atol=1e-3)
    after32, after16 = method_state_of(fp32), method_state_of(bf16)
    for key in after32:
        if key.endswith(".weight") and after32[key].is_floating_point():
            moved32 = after32[key] - before[key]
            moved16 = after16[key] - before[key]
            # Adam's first step moves each weight by about lr * sign(grad): the same direction
            agree = (moved32.sign() == moved16.sign()).float().mean()
            assert agree > 0.9, (key, float(agree))
    assert not torch.allclose(out16.values, out32.values, rtol=0, atol=0)  # bf16 did run


def test_a_run_records_whether_it_ran_in_bf16(tmp_path):
    for cpu_amp, exp in ((None, "fp32"), (True, "bf16")):
        results = train(tiny_config(tmp_path, exp=exp, cpu_amp=cpu_amp), tiny_bundle())
        config = json.loads((tmp_path / "tiny" / exp / "config.json").read_text())
        assert results["bf16"] is bool(cpu_amp) and config["bf16"] is bool(cpu_amp)
        assert results["config"]["cpu_amp"] == cpu_amp
    fp32 = tiny_config(tmp_path)
    assert "cpu_amp" not in fp32.identity()  # runs from before the flag keep their hash
    assert tiny_config(tmp_path, cpu_amp=True).config_hash() != fp32.config_hash()
