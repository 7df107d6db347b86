"""The contract diffusers checks for its own models (its ModelTesterMixin family), for every convdiff model class:
save / load (plain, variant, sharded with parallel loading), `from_pretrained(torch_dtype=...)`, determinism,
tuple and dict outputs, gradient checkpointing, layerwise casting, group offloading on the CPU, regional
compilation and training with EMA. Tolerances are stated beside each check (docs/contract.md)."""

import copy

import diffusers.models.modeling_utils as modeling_utils
import pytest
import torch
from diffusers.training_utils import EMAModel
from torch.utils._pytree import tree_leaves

from convdiff.models.controlnet import ControlNet
from convdiff.models.video import inflate
from convdiff.registry import create_model

from conftest import randomize_


def _dic():
    return create_model("dic-tiny", in_channels=3, sample_size=8, hidden_size=16, depth=[1, 1, 1, 1, 1])


def _dico():
    return create_model("dico-tiny", in_channels=3, sample_size=8, hidden_size=16)


# name -> a tiny model of each class; the ControlNet and the video / 4D models wrap a DiC or DiCo (inputs: `inputs`).
MODELS = {
    "dic": _dic,
    "dico": _dico,
    "diffit": lambda: create_model("diffit-tiny", in_channels=3, sample_size=8),
    "diffit-unet": lambda: create_model("diffit-unet-tiny", in_channels=3, sample_size=8),
    "layered-unet": lambda: create_model("layered-unet-tiny"),  # two scales: 16 and 8
    "controlnet": lambda: ControlNet.from_backbone(randomize_(_dic()), conditioning_channels=1),
    "video": lambda: inflate(randomize_(_dic()), to="video", temporal=("p3d", "attention"), max_frames=4),
    "4d": lambda: inflate(randomize_(_dico()), to="4d", camera_dim=12, max_frames=3, max_views=2),
}
NAMES = list(MODELS)


def inputs(name, timestep=(10, 700), dtype=torch.float32):
    g = torch.Generator().manual_seed(1)

    def noise(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    common = dict(timestep=torch.tensor(timestep), class_labels=torch.tensor([3, 7]))
    if name == "layered-unet":
        return dict(hidden_states=[noise(2, 3, 16, 16), noise(2, 3, 8, 8)], **common)
    if name == "controlnet":
        return dict(sample=noise(2, 3, 8, 8), controlnet_cond=torch.rand(2, 1, 8, 8, generator=g).to(dtype), **common)
    if name == "video":
        return dict(hidden_states=noise(2, 3, 3, 8, 8), **common)
    if name == "4d":
        return dict(hidden_states=noise(2, 3, 2, 3, 8, 8), cameras=noise(2, 2, 12), **common)
    return dict(hidden_states=noise(2, 3, 8, 8), **common)


def build(name, seed=0):
    """The model with random weights everywhere (zero-initialised heads would hide bugs), in eval mode."""
    torch.manual_seed(seed)
    return randomize_(MODELS[name](), seed=seed).eval()


def outputs(out) -> list:
    """Every tensor of a model output (the sample, a layered U-Net's scales, a ControlNet's residuals)."""
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return [t for t in tree_leaves(out) if torch.is_tensor(t)]


def run(model, name, **kwargs):
    return outputs(model(**inputs(name, **kwargs)))


def assert_all_close(actual, expected, atol=0.0, rtol=0.0):
    assert len(actual) == len(expected) > 0
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def relative_error(actual, expected) -> float:
    """max |a - b| over the largest |b|, over every output tensor."""
    return max(((a.float() - b).abs().max() / b.abs().max()).item() for a, b in zip(actual, expected))


def loss_of(tensors) -> torch.Tensor:
    return sum(t.float().square().mean() for t in tensors)


# --- save / load ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_save_load_plain_and_variant(name, tmp_path):
    model = build(name)
    with torch.no_grad():
        expected = run(model, name)
        model.save_pretrained(tmp_path / "plain")
        model.save_pretrained(tmp_path / "variant", variant="ema")
        assert (tmp_path / "variant" / "diffusion_pytorch_model.ema.safetensors").is_file()
        for folder, variant in (("plain", None), ("variant", "ema")):
            loaded = type(model).from_pretrained(tmp_path / folder, variant=variant).eval()
            assert_all_close(run(loaded, name), expected)  # the same weights: the same outputs, bit for bit


@pytest.mark.parametrize("name", NAMES)
def test_sharded_save_loads_in_parallel(name, tmp_path, monkeypatch):
    model = build(name)
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(tmp_path.glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    # HF_ENABLE_PARALLEL_LOADING is read once, when diffusers is imported: set what it sets
    monkeypatch.setattr(modeling_utils, "HF_ENABLE_PARALLEL_LOADING", True)
    threaded = []
    load_in_threads = modeling_utils._load_shard_files_with_threadpool

    def spy(*args, **kwargs):
        threaded.append(True)
        return load_in_threads(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "_load_shard_files_with_threadpool", spy)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert threaded, "diffusers did not take its parallel (thread pool) loading path"
    with torch.no_grad():
        assert_all_close(run(loaded, name), run(model, name))


@pytest.mark.parametrize("name", NAMES)
def test_from_pretrained_torch_dtype(name, tmp_path):
    model = build(name)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, torch_dtype=torch.bfloat16).eval()
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        out = run(loaded, name, dtype=torch.bfloat16)
        expected = run(model, name)
    assert all(o.dtype == torch.bfloat16 for o in out)
    # bf16 keeps 8 bits of mantissa: about 0.4% per rounding, a few percent through the whole network
    assert relative_error(out, expected) < 0.05


# --- forward --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_tuple_equals_dict(name):
    model = build(name)
    with torch.no_grad():
        first = model(**inputs(name))
        second = model(**inputs(name))
        as_tuple = model(**inputs(name), return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert_all_close(outputs(second), outputs(first))
    assert_all_close(outputs(as_tuple), outputs(first))
    other_time = run(model, name, timestep=(500, 999))
    assert not torch.allclose(other_time[0], outputs(first)[0])  # the inputs matter


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_gives_the_plain_outputs_and_gradients(name):
    plain = build(name).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.enable_gradient_checkpointing()
    assert checkpointed.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(5)  # the same label dropout in both
        out = run(model, name)
        loss_of(out).backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    assert_all_close(out_b, out_a, atol=1e-6, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for key, grad in grads_a.items():
        torch.testing.assert_close(grads_b[key], grad, atol=1e-6, rtol=1e-5, msg=key)


# --- layerwise casting ----------------------------------------------------------------------------------------------

# max |casting - fp32| / max |fp32| over the outputs: storage rounding (fp16 11 bits, bf16 8, fp8 e4m3 4 bits of
# mantissa) through the network. Measured on these tiny models: about 5e-4, 5e-3 and 7e-2.
CASTING_TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float8_e4m3fn: 0.15}


def castable_bytes(model, storage_dtype) -> int:
    """The parameter bytes expected after casting: Linear / Conv / Embedding weights whose module name matches no
    skip pattern (diffusers' defaults and the model's `_skip_layerwise_casting_patterns`) in `storage_dtype`."""
    skip = ("norm", "pos_embed", "patch_embed", "proj_in", "proj_out", *(model._skip_layerwise_casting_patterns or ()))
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Embedding)
    cast = {id(p) for name, m in model.named_modules() if isinstance(m, kinds) and not any(s in name for s in skip)
            for p in m.parameters(recurse=False)}
    size = torch.tensor([], dtype=storage_dtype).element_size()
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # counted by get_memory_footprint, never cast
    return buffers + sum(p.numel() * (size if id(p) in cast else p.element_size()) for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("storage_dtype", list(CASTING_TOLERANCE), ids=str)
def test_layerwise_casting_forward(name, storage_dtype):
    with torch.no_grad():
        expected = run(build(name), name)
        model = build(name)
        full = model.get_memory_footprint()
        model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch.float32)
        out = run(model, name)
    assert model.get_memory_footprint() == castable_bytes(model, storage_dtype) < full * 0.6
    assert all(o.dtype == torch.float32 for o in out)
    assert relative_error(out, expected) < CASTING_TOLERANCE[storage_dtype]


@pytest.mark.parametrize("name", NAMES)
def test_layerwise_casting_trains_under_autocast(name):
    model = build(name).train()
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_of(run(model, name))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and len(grads) > 0
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


# --- group offloading -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offload_on_cpu_gives_the_plain_outputs(name, offload_type):
    with torch.no_grad():
        expected = run(build(name), name)
        model = build(name)
        groups = dict(num_blocks_per_group=1) if offload_type == "block_level" else {}
        model.enable_group_offload(onload_device=torch.device("cpu"), offload_type=offload_type, **groups)
        out = run(model, name)
    # hooked convs run as plain module calls rather than the fused CPU paths of nn/fast_conv.py: rounding only
    assert_all_close(out, expected, atol=1e-5, rtol=1e-5)


# --- regional compilation --------------------------------------------------------------------------------------

def _dic_two_levels():
    """5 blocks of 3 shapes: two encoder blocks and the decoder's second share one, the middle and the decoder's
    first (which takes the skip) have their own."""
    return create_model("dic-tiny", in_channels=3, sample_size=8, hidden_size=8, depth=[2, 1, 2], mult_channels=[1, 2, 1])


def compiled_like_eager(model, name, train_steps: int, **compile_options):
    """Eager outputs (two timesteps) and gradients (train steps), then the same after compile_repeated_blocks under
    a recompile limit of 1 (as diffusers' own regional-compile test): fullgraph=True raises on any recompilation."""
    timesteps = [(10, 700), (500, 3)]

    def calls():
        model.eval()
        with torch.no_grad():
            results = [run(model, name, timestep=t) for t in timesteps]
        model.train()
        for step in range(train_steps):
            model.zero_grad()
            torch.manual_seed(step)
            loss_of(run(model, name, timestep=timesteps[step % 2])).backward()
            results.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        return results

    eager = calls()
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    with torch._dynamo.config.patch(recompile_limit=1):
        model.compile_repeated_blocks(fullgraph=True, **compile_options)
        compiled = calls()
    for a, b in zip(compiled, eager):
        assert_all_close(a, b, atol=1e-5, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] == model.compiled_region_count()  # each region compiled once
    return model.compiled_region_count()


def test_regional_compile_compiles_each_block_shape_once():
    model = randomize_(_dic_two_levels())
    assert sum(isinstance(m, type(model.middle[0])) for m in model.modules()) == 5
    assert compiled_like_eager(model, "dic", train_steps=0) == 3


@pytest.mark.parametrize("name", NAMES)
def test_every_models_regions_are_captured_once_per_block_shape(name):
    """The graph capture of regional compilation (dynamo with backend="eager": no code generation, so every class
    fits the default run) on inference calls at two timesteps and a training step: one graph per block shape, no
    recompilation, the eager outputs and gradients. The slow test below compiles the same regions with inductor."""
    model = build(name)
    blocks = sum(type(m).__name__ in model._repeated_blocks for m in model.modules())
    assert 1 <= compiled_like_eager(model, name, train_steps=1, backend="eager") <= 2 * blocks


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_regional_compile_of_every_model_never_recompiles(name):
    model = build(name)
    blocks = sum(type(m).__name__ in model._repeated_blocks for m in model.modules())
    regions = compiled_like_eager(model, name, train_steps=2)
    assert 1 <= regions <= 2 * blocks  # inference and training graphs: at most one per block each


# --- training with EMA --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_training_steps_with_ema(name):
    model = build(name).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # min_decay = decay: a constant decay after EMAModel's first update, which copies the weights (its decay is 0
    # until optimization_step exceeds update_after_step + 1)
    ema = EMAModel(trainable, decay=0.75, min_decay=0.75)
    shadow = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    start = [p.detach().clone() for p in trainable]
    for step in range(3):
        torch.manual_seed(step)
        loss = loss_of(run(model, name, timestep=(10 + step, 700 - step)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.step(trainable)
        decay = 0.0 if step == 0 else 0.75
        shadow = [decay * s + (1 - decay) * p.detach() for s, p in zip(shadow, trainable)]
        assert torch.isfinite(loss)
    assert any(not torch.equal(p, s) for p, s in zip(trainable, start))
    for ours, theirs in zip(shadow, ema.shadow_params):
        torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=1e-6)
    ema.copy_to(trainable)
    with torch.no_grad():
        assert all(torch.isfinite(o).all() for o in run(model.eval(), name))
