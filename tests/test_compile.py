"""`compile: true` trains the same model as eager, to rounding, with one graph (no break, no recompile)."""

import torch
from safetensors.torch import load_file

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
