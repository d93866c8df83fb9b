"""CUDA only (skipped elsewhere): device augmentation, bf16 autocast and channels_last in training."""

import pytest
import torch

from debiaslab.data.transforms import BatchTransform
from tests.conftest import read_log, tiny_bundle, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_batch_transform_on_cuda_is_seeded_and_channels_last():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")

    def run(seed):
        t = BatchTransform(mean=(0.5,) * 3, std=(0.2,) * 3, crop_padding=4, flip=True, channels_last=True,
                           generator=torch.Generator(device="cuda").manual_seed(seed))
        return t(x, train=True)

    a, b, c = run(0), run(0), run(1)
    assert a.device.type == "cuda" and a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("amp", [True, False])
@pytest.mark.parametrize("method", ["vanilla", "disent"])
def test_training_on_cuda_uses_bf16_and_channels_last(tmp_path, amp, method, monkeypatch):
    from debiaslab.models.resnet import ResNet18
    from debiaslab.train import train

    seen = {}
    original = ResNet18.extract

    def spy(self, x):
        z = original(self, x)
        if self.training:
            seen.update(input_channels_last=x.is_contiguous(memory_format=torch.channels_last),
                        weight_channels_last=self.conv1.weight.is_contiguous(memory_format=torch.channels_last),
                        feature_dtype=z.dtype)
        return z

    monkeypatch.setattr(ResNet18, "extract", spy)
    cfg = tiny_config(tmp_path, method=method, model="resnet18", num_steps=6, valid_freq=3, lr=1e-3, curr_step=2,
                      device="cuda", amp=amp)
    res = train(cfg, tiny_bundle(32))
    assert seen["feature_dtype"] == (torch.bfloat16 if amp else torch.float32)
    assert seen["input_channels_last"] and seen["weight_channels_last"]
    assert res["selections"]["last"]["test"]["accuracy"] is not None
    log = read_log(tmp_path / "tiny" / "e", "train")
    train_losses = [v for r in log for k, v in r.items() if k not in ("kind", "step", "lr")]
    assert train_losses and all(torch.isfinite(torch.tensor(v)) for v in train_losses)


def test_resume_on_cuda_continues_from_the_checkpoint(tmp_path, monkeypatch):
    """An interrupted CUDA run resumes (CUDA generators, device-side sampler and EMA state restored)."""
    from debiaslab.methods.disent import DisEnt
    from debiaslab.train import train

    def cfg(log):
        return tiny_config(log, method="disent", model="resnet18", num_steps=30, lr=1e-3, curr_step=8,
                           device="cuda", amp=False, channels_last=False)

    straight = train(cfg(tmp_path / "a"), tiny_bundle(32))
    original = DisEnt.update

    def crash_at_17(self, x, y, idx, step):
        if step == 16:
            raise KeyboardInterrupt
        return original(self, x, y, idx, step)

    monkeypatch.setattr(DisEnt, "update", crash_at_17)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "b"), tiny_bundle(32))
    monkeypatch.setattr(DisEnt, "update", original)
    resumed = train(cfg(tmp_path / "b"), tiny_bundle(32))
    assert resumed["steps"] == 30
    a, b = straight["selections"]["last"]["test"], resumed["selections"]["last"]["test"]
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.25  # same run up to CUDA's non-deterministic kernels
    state = torch.load(tmp_path / "b" / "tiny" / "e" / "checkpoint_last.pt", weights_only=True)
    assert state["step"] == 30 and state["sampler"]["epoch"] >= 1
