import pytest
import torch


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Fill every parameter with random values, so zero-initialised heads do not hide bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def save_torchscript(module: torch.nn.Module, path):
    """Script `module` in eval mode and save it to `path` (the format of the Inception / I3D files users give)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in torch >= 2.10
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def assert_saved_as_recipe(pipeline_dir, config, scheduler_class=None):
    """A folder the training loop wrote samples by default as its recipe says (sample_scheduler, steps, guidance),
    carries a model card with the run's record, and loads through diffusers' DiffusionPipeline as the same class."""
    from pathlib import Path

    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(pipeline_dir, trust_remote_code=True)
    assert type(pipeline).__module__.startswith("convdiff.pipelines.")
    assert pipeline.sampling_arguments()["num_inference_steps"] == config.sample_num_inference_steps
    assert pipeline.sampling_arguments()["guidance_scale"] == config.sample_guidance_scale
    if scheduler_class is not None:
        assert type(pipeline.scheduler).__name__ == scheduler_class
    card = (Path(pipeline_dir) / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n") and "## Training" in card
    assert f"{config.max_train_steps} optimizer steps" in card or "optimizer steps" in card
    return pipeline
