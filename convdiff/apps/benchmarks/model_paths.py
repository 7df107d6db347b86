"""The paths a denoiser can run on, for the benchmarks that compare them side by side.

- `nchw`: a conv model (DiC, DiCo) with its 4-D weights and the input kept NCHW, the layout channels-last is
  measured against;
- `default`: what `create_model(name)` gives and `model(x, t, y)` runs (DiC / DiCo channels-last inside,
  models/memory_format.py; diffusers' models unchanged);
- `compiled`: the default path under `torch.compile` (tests/test_compile.py: one graph, no breaks);
- `onednn` (asked for by name, never a best path): a conv model's default path with every convolution through
  oneDNN, `nn/fast_conv.py`'s GEMM route for few-row convs turned off: what that route is worth, side by side;
- `aten-norm` (asked for by name, never a best path): the default path with DiCo's LayerNorm + modulation as
  ATen's two ops instead of `nn/norm_modulate.py`'s native pass: what the kernel is worth.

Library imports stay inside the functions, so a command that imports this module answers `--help` without
loading diffusers (tests/test_cli.py).
"""

from contextlib import contextmanager, nullcontext

import torch

from ...training.optimizer import adamw

PATHS = ("nchw", "default", "compiled")
DIAGNOSTIC_PATHS = ("onednn", "aten-norm")


def has_nchw_path(model) -> bool:
    """Only the channels-last conv models have an NCHW path of their own; others run the same on both."""
    from ...models.memory_format import ChannelsLastMixin

    return isinstance(model, ChannelsLastMixin)


def build(name: str, path: str, train: bool = False, compile_options: dict | None = None, **overrides):
    """A seeded registry model on `path`; `compiled` compiles in place, as the recipe key `compile: true` does."""
    from ...registry import create_model

    if path not in PATHS + DIAGNOSTIC_PATHS:
        raise ValueError(f"Unknown path {path!r}: use one of {', '.join(PATHS + DIAGNOSTIC_PATHS)}.")
    torch.manual_seed(0)
    model = create_model(name, **overrides).train(train)
    if path == "nchw" and has_nchw_path(model):
        for parameter in model.parameters():
            parameter.data = parameter.data.contiguous()
    if path == "compiled":
        model.compile(**(compile_options or {}))
    return model


@contextmanager
def nchw_input(enabled: bool = True):
    """The NCHW path's input: it enters the conv models' forward without the channels-last conversion."""
    from ...models import dic, dico

    saved = {module: module.to_channels_last for module in (dic, dico)}
    if enabled:
        for module in saved:
            module.to_channels_last = lambda tensor: tensor
    try:
        yield
    finally:
        for module, function in saved.items():
            module.to_channels_last = function


@contextmanager
def without_gemm_route(enabled: bool = True):
    """The onednn path: no conv is few-rowed enough for fast_conv's GEMM route while this lasts."""
    from ...nn import fast_conv

    saved = fast_conv.MAX_MATMUL_ROWS
    if enabled:
        fast_conv.MAX_MATMUL_ROWS = 0
    try:
        yield
    finally:
        fast_conv.MAX_MATMUL_ROWS = saved


def on_path(model, path: str):
    """`model` as a callable on `path`: the NCHW path also keeps the input's layout, the onednn path turns the
    GEMM route off, the aten-norm path the native LayerNorm + modulation."""
    from ...nn.norm_modulate import aten_ops

    conv = has_nchw_path(getattr(model, "_orig_mod", model))

    def call(*args, **kwargs):
        with nchw_input(path == "nchw" and conv), without_gemm_route(path == "onednn"), \
                (aten_ops() if path == "aten-norm" else nullcontext()):
            return model(*args, **kwargs)

    return call


def example_inputs(model, batch: int, seed: int = 0) -> tuple:
    """(x, t, class labels) for `model`'s config: NCHW noise, timesteps in [0, 1000), labels within its classes."""
    from ...nn.inputs import class_info

    config = model.config
    size = config.sample_size
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, size, size, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    y = torch.randint(0, max(class_info(config)[0], 1), (batch,), generator=generator)
    return x, t, y


def train_step(model, path: str, inputs: tuple, lr: float = 1e-4):
    """One training step (forward + backward + AdamW) as a closure; the loss is a stand-in (mean square)."""
    x, t, y = inputs
    optimizer = adamw(model.parameters(), lr=lr)  # what `convdiff train` steps with
    forward = on_path(model, path)

    def step():
        out = forward(x, t, class_labels=y).sample  # DiC, DiCo, DiT and UNet2DModel all take (x, t, class_labels)
        out.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step
