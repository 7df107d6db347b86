import pytest
import torch
import numpy as np
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline

from convdiff.models.diffit import DiffiTBlock, DiffiTModel
from convdiff.pipelines.class_conditional import ClassConditionalPipeline
from convdiff.registry import create_model, model_spec

from conftest import randomize_


def meta_params(name, **overrides):
    cls, config = model_spec(name)
    with torch.device("meta"):
        model = cls(**{**config, **overrides})
    return sum(p.numel() for p in model.parameters()), model


def tiny(**overrides):
    config = dict(hidden_size=32, depth=2, num_heads=2, sample_size=8, in_channels=4, num_classes=10)
    config.update(overrides)
    return DiffiTModel(**config)


# ---- DiffiT latent ----------------------------------------------------------------------------------------

def test_diffit_xl_has_exactly_the_released_parameter_count():
    count, model = meta_params("diffit-xl")
    # 561,330,144 = the official DiffiT-XL/2 at 256 (depth 28; the released NVlabs/DiffiT checkpoint), of which 294,912
    # are the frozen sin-cos pos_embed Parameter the official code also counts.
    assert count == 561_330_144
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 561_330_144 - 256 * 1152
    assert len(model.blocks) == 28 and model.grid_size == 16
    assert model.blocks[0].attn.position_bias.relative_position_bias_table.shape == (31 * 31, 16)
    assert meta_params("diffit-xl-512")[0] == 563_562_464  # 563.56M with the 63x63 bias table
    assert meta_params("diffit-xl", depth=30)[0] == pytest.approx(601.2e6, rel=1e-3)  # the paper's "depth 30"


def test_diffit_init_matches_the_official_rules():
    model = tiny()
    assert torch.count_nonzero(model.final_layer.linear.weight) == 0  # zero head: predicts 0 at init
    attn = model.blocks[0].attn
    assert torch.count_nonzero(attn.qkv_temb.weight) > 0  # the time projection is NOT zeroed (xavier)
    assert torch.count_nonzero(attn.qkv.bias) == 0
    assert 0.005 < model.y_embedder.embedding_table.weight.std() < 0.04
    assert not model.pos_embed.requires_grad
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([3, 900]), torch.tensor([1, 2])).sample
    assert out.shape == (2, 8, 8, 8) and torch.count_nonzero(out) == 0


def test_diffit_forward_is_the_block_stack():
    """Patchify + pos_embed, c = t + y, blocks (global TMSA), unconditioned head, unpatchify: by hand."""
    model = randomize_(tiny()).eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.tensor([4, 10])
    tokens = model.x_embedder.proj(x).flatten(2).transpose(1, 2) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y)
    for block in model.blocks:
        tokens = block(tokens, c)
    patches = model.final_layer(tokens).view(2, 4, 4, 2, 2, 8)  # (b, h, w, p, q, c)
    expected = torch.einsum("nhwpqc->nchpwq", patches).reshape(2, 8, 8, 8)
    torch.testing.assert_close(model(x, t, y).sample, expected, atol=1e-5, rtol=1e-5)


def test_diffit_label_dropout_and_null_class():
    model = randomize_(tiny()).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 5])
    dropped = model(x, t, torch.tensor([3, 4]), force_drop_ids=torch.tensor([1, 0])).sample
    null = model(x, t, torch.tensor([10, 4])).sample
    torch.testing.assert_close(dropped, null)
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 10\]"):
        model(x, t, torch.tensor([11, 0]))


def test_diffit_windowed_variant_and_window_errors():
    model = randomize_(tiny(sample_size=16, window_size=4)).eval()  # 8x8 tokens, 4x4 windows
    assert model.blocks[0].attn.position_bias.window_size == (4, 4)
    out = model(torch.randn(1, 4, 16, 16), 3, torch.tensor([0])).sample
    assert out.shape == (1, 8, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"window size 3 does not divide the 8x8 token grid"):
        tiny(sample_size=16, window_size=3)


def test_diffit_bad_inputs_are_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match="in_channels=4 but got 3 channels"):
        model(torch.randn(1, 3, 8, 8), 1, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"built for 8x8 inputs .* sample_size=16"):
        model(torch.randn(1, 4, 16, 16), 1, torch.tensor([0]))
    with pytest.raises(ValueError, match="class-conditional"):
        model(torch.randn(1, 4, 8, 8), 1)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        tiny(sample_size=9)


def test_diffit_unconditional_and_learn_sigma_off():
    model = randomize_(tiny(num_classes=0, learn_sigma=False, prediction_type="v_prediction"))
    assert model.y_embedder is None and model.config.out_channels == 4
    assert model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2])).sample.shape == (2, 4, 8, 8)


def test_diffit_gradient_checkpointing_gives_the_same_gradients():
    model = randomize_(tiny()).train()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([1, 2])

    def grads():
        model.zero_grad()
        torch.manual_seed(0)
        model(x, t, y, force_drop_ids=torch.zeros(2)).sample.square().mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)


def test_diffit_save_load_round_trip(tmp_path):
    model = randomize_(tiny()).eval()
    model.save_pretrained(tmp_path)
    loaded = DiffiTModel.from_pretrained(tmp_path).eval()
    x, t, y = torch.randn(1, 4, 8, 8), torch.tensor([7]), torch.tensor([2])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    # same weights; CPU kernels may round differently for differently aligned buffers (~1e-7)
    torch.testing.assert_close(model(x, t, y).sample, loaded(x, t, y).sample, atol=1e-6, rtol=0)
    half = DiffiTModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert half.blocks[0].attn.qkv.weight.dtype == torch.bfloat16


def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def test_pipelines_drive_diffit():
    model = randomize_(create_model("diffit-tiny", sample_size=8, num_classes=1000)).eval()  # DiTPipeline: null id 1000
    dit_pipe = DiTPipeline(transformer=model, vae=tiny_vae(), scheduler=DDIMScheduler(clip_sample=False))
    dit_pipe.set_progress_bar_config(disable=True)
    images = dit_pipe([1, 2], num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    # our pipeline, with DiffiT's own guidance: power-cosine ramp on the first 3 channels
    pipe = ClassConditionalPipeline(transformer=model, scheduler=DDIMScheduler(clip_sample=False), vae=tiny_vae())
    pipe.set_progress_bar_config(disable=True)
    images = pipe([3, 4], num_inference_steps=2, guidance_scale=4.4, guidance_schedule="power-cosine",
                  guidance_channels=3, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()


def test_diffit_block_attention_names_for_module_swaps():
    """ΔConvFusion and other swaps find the self-attention as `blocks.N.attn` with q/k/v in `qkv`."""
    model = tiny()
    names = [n for n, m in model.named_modules() if n.endswith(".attn")]
    assert names == ["blocks.0.attn", "blocks.1.attn"]
    assert isinstance(model.blocks[0], DiffiTBlock)
    assert {n for n, _ in model.blocks[0].attn.named_children()} == {"qkv", "qkv_temb", "proj", "position_bias"}


# ---- official checkpoint converter ------------------------------------------------------------------------

def official_layout(depth=2, hidden=32, heads=2, grid=4, patch=2, in_channels=4, classes=10, seed=0, index=True):
    """A state dict under the official DiffiT key names (the released NVlabs/DiffiT checkpoint), shapes by hand."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "x_embedder.proj.weight": (hidden, in_channels, patch, patch), "x_embedder.proj.bias": (hidden,),
        "t_embedder.mlp.0.weight": (hidden, 256), "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.mlp.2.weight": (hidden, hidden), "t_embedder.mlp.2.bias": (hidden,),
        "y_embedder.embedding_table.weight": (classes + 1, hidden),
        "pos_embed": (1, grid * grid, hidden),
        "final_layer.linear.weight": (patch * patch * 2 * in_channels, hidden),
        "final_layer.linear.bias": (patch * patch * 2 * in_channels,),
    }
    for n in range(depth):
        shapes.update({
            f"blocks.{n}.attn.qkv.weight": (3 * hidden, hidden), f"blocks.{n}.attn.qkv.bias": (3 * hidden,),
            f"blocks.{n}.attn.qkv_temb.weight": (3 * hidden, hidden), f"blocks.{n}.attn.qkv_temb.bias": (3 * hidden,),
            f"blocks.{n}.attn.proj.weight": (hidden, hidden), f"blocks.{n}.attn.proj.bias": (hidden,),
            f"blocks.{n}.attn.relative_position_bias_table": ((2 * grid - 1) ** 2, heads),
            f"blocks.{n}.mlp.fc1.weight": (4 * hidden, hidden), f"blocks.{n}.mlp.fc1.bias": (4 * hidden,),
            f"blocks.{n}.mlp.fc2.weight": (hidden, 4 * hidden), f"blocks.{n}.mlp.fc2.bias": (hidden,),
        })
    state = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}
    if index:
        for n in range(depth):  # Swin index, written out independently of our helper
            coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")).flatten(1)
            rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (grid - 1)
            state[f"blocks.{n}.attn.relative_position_index"] = rel[..., 0] * (2 * grid - 1) + rel[..., 1]
    return state


def test_converter_loads_the_official_layout(tmp_path):
    from safetensors.torch import save_file

    from convdiff.convert import convert_official_checkpoint, convert_official_to_folder, to_official_state_dict

    official = official_layout()
    model = convert_official_checkpoint(official, "diffit-tiny", sample_size=8)
    assert isinstance(model, DiffiTModel)
    torch.testing.assert_close(model.blocks[1].attn.position_bias.relative_position_bias_table,
                               official["blocks.1.attn.relative_position_bias_table"])
    torch.testing.assert_close(model.blocks[0].attn.qkv_temb.weight, official["blocks.0.attn.qkv_temb.weight"])
    back = to_official_state_dict(model)
    assert set(back) == set(official) and all(torch.equal(back[k], official[k].to(back[k].dtype)) for k in official)
    # a file without the index buffers converts too (they are recomputed), through the CLI folder writer
    save_file({k: v.contiguous() for k, v in official_layout(index=False).items()}, tmp_path / "diffit.safetensors")
    out = convert_official_to_folder(tmp_path / "diffit.safetensors", tmp_path / "folder", model="diffit-tiny",
                                     sample_size=8)
    loaded = DiffiTModel.from_pretrained(out, subfolder="transformer")
    x, t, y = torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.tensor([1])
    torch.testing.assert_close(loaded(x, t, y).sample, model(x, t, y).sample, atol=1e-6, rtol=0)


def test_converter_cli(tmp_path):
    from safetensors.torch import save_file

    from convdiff.cli import main

    save_file({k: v.contiguous() for k, v in official_layout().items()}, tmp_path / "diffit.safetensors")
    assert main(["convert", "--checkpoint", str(tmp_path / "diffit.safetensors"), "--model", "diffit-tiny",
                 "--sample-size", "8", "--output", str(tmp_path / "out")]) == 0
    assert DiffiTModel.from_pretrained(tmp_path / "out", subfolder="transformer").config.sample_size == 8


def test_converter_errors_are_clear():
    from convdiff.convert import convert_official_checkpoint

    official = official_layout()
    with pytest.raises(ValueError, match=r"(?s)does not fit diffit-xl.*shape mismatch.*fits 'diffit-tiny'"):
        convert_official_checkpoint(official, "diffit-xl")
    missing = dict(official)
    del missing["blocks.1.attn.qkv_temb.weight"]
    with pytest.raises(ValueError, match=r"1 missing key.*blocks\.1\.attn\.qkv_temb\.weight"):
        convert_official_checkpoint(missing, "diffit-tiny", sample_size=8)
    extra = dict(official, **{"blocks.0.attn.q_norm.weight": torch.ones(16)})
    with pytest.raises(ValueError, match=r"1 unexpected key.*blocks\.0\.attn\.q_norm\.weight"):
        convert_official_checkpoint(extra, "diffit-tiny", sample_size=8)
    bad_index = dict(official, **{"blocks.0.attn.relative_position_index": torch.zeros(16, 16, dtype=torch.long)})
    with pytest.raises(ValueError, match="not the Swin relative position index"):
        convert_official_checkpoint(bad_index, "diffit-tiny", sample_size=8)


# ---- image-space DiffiT U-Net -----------------------------------------------------------------------------

from convdiff.models.diffit_unet import DiffiTResBlock, DiffiTUNetModel  # noqa: E402


def tiny_unet(**overrides):
    return create_model("diffit-unet-tiny", **overrides)


def test_unet_paper_configurations():
    for name, size, levels, window in (("diffit-unet-cifar10", 32, 3, 4), ("diffit-unet-ffhq64", 64, 4, 8)):
        count, model = meta_params(name)
        assert model.config.sample_size == size and model.levels == levels and model.config.base_channels == 128
        assert {b.window_size for b in model.modules() if isinstance(b, DiffiTResBlock)} == {window}
        assert all(len(stage) == 4 for stage in model.encoder) and all(len(stage) == 4 for stage in model.decoder)
        assert model.config.num_classes == 0 and model.stem.out_channels == 128
    assert meta_params("diffit-unet-cifar10")[0] == 45_405_163
    assert meta_params("diffit-unet-ffhq64")[0] == 59_946_123


def test_unet_resblock_is_conv_then_windowed_tmsa_block_plus_shortcut():
    from convdiff.nn.window import repeat_per_window, window_merge, window_partition

    block = randomize_(DiffiTResBlock(8, 16, num_heads=2, window_size=4, temb_dim=6))
    x, temb = torch.randn(2, 8, 8, 8), torch.randn(2, 6)
    h = block.conv(torch.nn.functional.silu(block.norm(x)))
    windows = window_partition(h.permute(0, 2, 3, 1), 4)  # (2*4 windows, 16 tokens, 16)
    out = block.transformer(windows, repeat_per_window(temb, 8, 8, 4))
    expected = window_merge(out, 8, 8, 4).permute(0, 3, 1, 2) + block.shortcut(x)
    torch.testing.assert_close(block(x, temb), expected, atol=1e-5, rtol=1e-5)
    # windows are independent: changing one quadrant of the input to the transformer leaves the others unchanged
    assert block.transformer.attn.position_bias.window_size == (4, 4)


def test_unet_forward_skips_and_zero_init():
    model = tiny_unet()
    x = torch.randn(2, 3, 16, 16)
    out = model(x, torch.tensor([1, 999]), torch.tensor([0, 9])).sample
    assert out.shape == (2, 3, 16, 16) and torch.count_nonzero(out) == 0  # zero output conv
    randomize_(model).eval()
    temb = model._condition(x, torch.tensor([1, 999]), torch.tensor([0, 9]), None)
    skips, middle = model._encode(x, temb)
    assert [s.shape[-1] for s in skips] == [16, 8] and middle.shape == (2, 32, 8, 8)
    torch.testing.assert_close(model._decode(middle, skips, temb), model(x, torch.tensor([1, 999]),
                                                                        torch.tensor([0, 9])).sample)
    # a skip really feeds the decoder
    changed = model._decode(middle, [skips[0] + 1, skips[1]], temb)
    assert not torch.allclose(changed, model._decode(middle, skips, temb))


def test_unet_errors_and_variants():
    with pytest.raises(ValueError, match=r"sample_size 24 must be divisible by 16 .*window size does not divide"):
        tiny_unet(sample_size=24, window_size=8)
    model = tiny_unet()
    with pytest.raises(ValueError, match="height and width must be divisible by 8"):
        model(torch.randn(1, 3, 12, 12), 1, torch.tensor([0]))
    with pytest.raises(ValueError, match="in_channels=3 but got 1"):
        model(torch.randn(1, 1, 16, 16), 1, torch.tensor([0]))
    with pytest.raises(ValueError, match="one entry per resolution"):
        tiny_unet(layers_per_block=[1])
    # windowed attention is not tied to the training size: any multiple of the stride runs
    assert model(torch.randn(1, 3, 24, 24), 1, torch.tensor([0])).sample.shape == (1, 3, 24, 24)
    sigma = tiny_unet(learn_sigma=True, num_classes=0)
    assert sigma(torch.randn(1, 3, 16, 16), 1).sample.shape == (1, 6, 16, 16)


def test_unet_gradient_checkpointing_and_save_load(tmp_path):
    model = randomize_(tiny_unet()).train()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 4]), torch.tensor([1, 2])

    def grads():
        model.zero_grad()
        model(x, t, y, force_drop_ids=torch.zeros(2)).sample.square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)
    model.eval().save_pretrained(tmp_path)
    loaded = DiffiTUNetModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(x, t, y).sample, model(x, t, y).sample, atol=1e-6, rtol=0)


def test_unet_in_the_class_conditional_pipeline():
    model = randomize_(tiny_unet()).eval()
    pipe = ClassConditionalPipeline(transformer=model, scheduler=DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    images = pipe([1, 2], num_inference_steps=2, guidance_scale=2.0, generator=torch.manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()


def test_unet_attention_names_for_module_swaps():
    names = [n for n, _ in tiny_unet().named_modules() if n.endswith(".attn")]
    assert names[0] == "encoder.0.0.transformer.attn" and "middle.0.transformer.attn" in names
    assert len(names) == 5  # 2 encoder + 1 middle + 2 decoder ResBlocks


# ---- training with the shared loop ------------------------------------------------------------------------

@pytest.mark.parametrize("config,shrink", [
    ("configs/diffit-mnist-tiny.yaml", ["model_overrides.hidden_size=16", "model_overrides.depth=1",
                                        "model_overrides.num_heads=2"]),
    ("configs/diffit-unet-mnist-tiny.yaml", ["model_overrides.base_channels=8", "model_overrides.block_out_channels=[8, 8]",
                                             "model_overrides.layers_per_block=[1, 1]", "model_overrides.num_heads=1"]),
])
def test_mnist_recipes_train_with_the_loop(tmp_path, config, shrink):
    from pathlib import Path

    from convdiff.pipelines import ClassConditionalPipeline
    from convdiff.apps.train import train_main
    from convdiff.training.checkpoints import list_checkpoints

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    train_main(["--config", str(root / config), *shrink, "max_train_steps=3", "train_batch_size=4",
                "checkpointing_steps=3", "report_to=null", "sample_num_inference_steps=2", f"output_dir={out}"])
    assert [s for s, _ in list_checkpoints(out)] == [3]
    pipe = ClassConditionalPipeline.from_pretrained(out / "pipeline")
    images = pipe(class_labels=[7], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 28, 28, 1) and np.isfinite(images).all()
