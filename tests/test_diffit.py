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
    # 561,330,144 = the official DiffiT-XL/2 at 256 (depth 28; reference/backbones.md §4.2), of which 294,912
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
