"""DiC / DiCo run channels-last inside and hand back the caller's layout; saving and reloading keep that."""

import pytest
import torch

from convdiff import create_model
from convdiff.models.controlnet import ControlNet

CL = torch.channels_last


def conv_weights(model):
    return [p for p in model.parameters() if p.ndim == 4]


@pytest.mark.parametrize("name", ["dic-tiny", "dico-tiny"])
def test_channels_last_inside_caller_layout_outside(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name, sample_size=16).eval()
    assert all(p.is_contiguous(memory_format=CL) for p in conv_weights(model))
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([3, 700]), torch.tensor([1, 2])
    with torch.no_grad():
        out = model(x, t, y).sample
        assert out.is_contiguous()  # NCHW in, NCHW out
        assert model(x.contiguous(memory_format=CL), t, y).sample.is_contiguous(memory_format=CL)
        nchw = create_model(name, sample_size=16).eval()
        nchw.load_state_dict(model.state_dict())
        for p in conv_weights(nchw):
            p.data = p.data.contiguous()
        # same convolutions, other summation order: equal to rounding
        torch.testing.assert_close(out, nchw(x, t, y).sample, atol=1e-5, rtol=1e-5)
    assert all(v.is_contiguous() for v in model.state_dict().values())  # what safetensors needs
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert all(p.is_contiguous(memory_format=CL) for p in conv_weights(loaded))
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y).sample, out)


def test_a_reloaded_controlnet_keeps_its_backbone_copy_channels_last(tmp_path):
    base = create_model("dic-tiny", sample_size=16)
    ControlNet.from_backbone(base, conditioning_channels=1).save_pretrained(tmp_path)
    loaded = ControlNet.from_pretrained(tmp_path)
    assert all(p.is_contiguous(memory_format=CL) for p in conv_weights(loaded.backbone))
