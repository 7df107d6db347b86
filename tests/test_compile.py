"""torch.compile: DiC, DiCo and DiffiT compile without graph breaks and without recompiling across timesteps, and
`compile: true` trains the same model as eager, to rounding."""

import pytest
import torch
from safetensors.torch import load_file

from convdiff import create_model

from convdiff.training.config import load_config
from convdiff.training.loop import train

TINY = ["model=dic-tiny", "model_overrides.hidden_size=8", "model_overrides.depth=[1,1,1]",
        "model_overrides.mult_channels=[1,2,1]", "model_overrides.in_channels=1", "model_overrides.sample_size=28",
        "model_overrides.num_classes=10", "model_overrides.learn_sigma=false", "train_batch_size=4", "report_to=null",
        "max_train_steps=3", "checkpointing_steps=0", "sample_final_grid=false", "use_ema=false"]


def weights(folder):
    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_compiled_training_equals_eager_without_graph_breaks(tmp_path, monkeypatch):
    eager = weights(train(load_config(None, [*TINY, f"output_dir={tmp_path / 'eager'}"])))
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)  # new timesteps / labels: same graph
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = weights(train(load_config(None, [*TINY, "compile=true", f"output_dir={tmp_path / 'compiled'}"])))
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert eager.keys() == compiled.keys()  # compiled in place: the saved names are the eager module's
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,overrides", [("dic-tiny", {"sample_size": 16}), ("dico-tiny", {"sample_size": 16}),
                                            ("diffit-tiny", {})])
def test_compiled_forward_equals_eager_with_one_graph_across_timesteps(name, overrides, monkeypatch):
    torch.manual_seed(0)
    model = create_model(name, **overrides).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)  # the default init zeroes the heads; make every weight count
    size, channels = model.config.sample_size, model.config.in_channels
    x, y = torch.randn(2, channels, size, size), torch.tensor([1, 3])
    timesteps = [torch.tensor([t, t]) for t in (10, 500, 999)]
    with torch.no_grad():
        eager = [model(x, t, y).sample for t in timesteps]
        torch._dynamo.reset()
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)  # each new timestep: the same graph
        counters = torch._dynamo.utils.counters
        counters.clear()
        model.compile()  # diffusers' / torch's in-place compile, as a user would call it
        compiled = [model(x, t, y).sample for t in timesteps]
    assert not counters["graph_break"], dict(counters["graph_break"])
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
