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
