import math

import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding

from convdiff.models.dic import DiCModel, skip_sources, skip_targets
from convdiff.models.dico import DiCoModel
from convdiff.nn.embeddings import timestep_sinusoid
from convdiff.registry import MODELS, PAPER_PARAMS, create_model, model_spec

from conftest import randomize_


def count_params(name):
    cls, config = model_spec(name)
    with torch.device("meta"):
        model = cls(**config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_parameter_counts_match_papers(name):
    assert abs(count_params(name) - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 1e-3


def test_dico_counts_are_exact_to_the_official_logs():
    assert count_params("dico-xl") == 701_151_368
    assert count_params("dico-s") == 33_137_672


@pytest.mark.parametrize("name,inner", [("dit-s-2", 384), ("dit-b-2", 768), ("dit-l-2", 1024), ("dit-xl-2", 1152)])
def test_dit_baselines_have_paper_widths(name, inner):
    cls, config = model_spec(name)
    with torch.device("meta"):
        model = cls(**config)
    assert model.inner_dim == inner
    assert model.config.out_channels == 8 and model.config.patch_size == 2


def test_timestep_embedding_is_official_formula():
    t = torch.tensor([0, 1, 250, 999.5])
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    args = t[:, None] * freqs[None]
    expected = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    torch.testing.assert_close(timestep_sinusoid(t, 256), expected)
    # diffusers' default shift divides by (half - 1): a different embedding, which is why we keep our own.
    diffusers_default = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=1)
    assert not torch.allclose(diffusers_default, expected, atol=1e-3)
    torch.testing.assert_close(get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0), expected)


def test_sparse_skip_pairing_matches_reference():
    assert skip_sources(6, 3) == [2, 5] and skip_targets(6, 3) == [0, 3]
    assert skip_sources(7, 3) == [0, 3, 6] and skip_targets(7, 3) == [0, 3, 6]
    assert skip_sources(14, 3) == [1, 4, 7, 10, 13] and skip_targets(14, 3) == [0, 3, 6, 9, 12]


def test_dic_decoder_blocks_take_concatenated_skips():
    model = create_model("dic-tiny")
    first = model.decoder[-1][0]
    assert first.conv0.in_channels == 64 and first.conv0.out_channels == 32
    assert isinstance(first.shortcut, torch.nn.Conv2d)
    assert model.decoder[-1][1].conv0.in_channels == 32


@pytest.mark.parametrize("name", ["dic-tiny", "dico-tiny"])
@pytest.mark.parametrize(
    "overrides,size",
    [
        ({}, (32, 32)),
        ({"in_channels": 1, "learn_sigma": False}, (28, 28)),
        ({"in_channels": 3}, (8, 12)),
        ({"num_classes": 0}, (16, 16)),
    ],
)
def test_forward_shapes(name, overrides, size):
    model = create_model(name, **overrides).eval()
    c = model.config.in_channels
    x = torch.randn(2, c, *size)
    labels = None if model.config.num_classes == 0 else torch.tensor([1, 3])
    out = model(x, torch.tensor([10, 900]), labels).sample
    assert out.shape == (2, model.config.out_channels, *size)
    assert model.config.out_channels == c * (2 if model.config.learn_sigma else 1)


@pytest.mark.parametrize("name", ["dic-tiny", "dico-tiny"])
def test_fresh_model_predicts_zero(name):
    model = create_model(name).eval()
    out = model(torch.randn(2, 4, 16, 16), 500, torch.tensor([0, 1])).sample
    assert torch.count_nonzero(out) == 0


def test_init_rules_dic_gate_random_dico_adaln_zero():
    dic, dico = create_model("dic-tiny"), create_model("dico-tiny")
    assert dic.encoder[0][0].modulation.proj.weight.abs().sum() > 0  # official DiC misses the zeroing
    assert dico.encoder_1[0].modulation.proj.weight.abs().sum() == 0  # adaLN-Zero
    assert abs(dic.conditioning.label_embedders[0].embedding_table.weight.std().item() - 0.02) < 0.005


@pytest.mark.parametrize("name", ["dic-tiny", "dico-tiny"])
def test_output_depends_on_time_and_class(name):
    model = randomize_(create_model(name)).eval()
    x = torch.randn(1, 4, 16, 16)
    base = model(x, 10, torch.tensor([1])).sample
    assert not torch.allclose(base, model(x, 800, torch.tensor([1])).sample)
    assert not torch.allclose(base, model(x, 10, torch.tensor([2])).sample)
    torch.testing.assert_close(base, model(x, torch.tensor([10]), [1]).sample)


@pytest.mark.parametrize("name", ["dic-tiny", "dico-tiny"])
def test_label_dropout_uses_null_class_at_every_level(name):
    model = randomize_(create_model(name)).eval()
    x = torch.randn(2, 4, 16, 16)
    dropped = model(x, 5, torch.tensor([1, 2]), force_drop_ids=torch.tensor([1, 0])).sample
    null = model(x, 5, torch.tensor([10, 2])).sample
    torch.testing.assert_close(dropped, null)


@pytest.mark.parametrize("name", ["dic-tiny", "dico-tiny"])
def test_gradient_checkpointing_gives_same_gradients(name):
    model = randomize_(create_model(name)).train()
    model.conditioning.class_dropout_prob = 0.0  # keep the comparison deterministic
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([3, 700]), torch.tensor([1, 2])

    def grads():
        model.zero_grad()
        model(x, t, y).sample.square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["dic-tiny", "dico-tiny"])
def test_save_load_round_trip_and_dtype(tmp_path, name):
    model = randomize_(create_model(name, in_channels=3, num_classes=7)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    cls = type(model)
    loaded = cls.from_pretrained(tmp_path)
    assert not loaded.training
    assert loaded.config.num_classes == 7 and loaded.config.out_channels == 6
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(loaded(x, 3, [4]).sample, model(x, 3, [4]).sample)
    for kwargs in ({"torch_dtype": torch.bfloat16}, {"dtype": torch.bfloat16}):
        low = cls.from_pretrained(tmp_path, **kwargs)
        assert low.dtype == torch.bfloat16
        assert low(x.bfloat16(), 3, [4]).sample.dtype == torch.bfloat16


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = create_model("dico-tiny")
    torch.manual_seed(3)
    b = create_model("dico-tiny")
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["dic-tiny", "dico-tiny"])
def test_bad_input_errors(name):
    model = create_model(name).eval()
    x = torch.randn(1, 4, 16, 16)
    with pytest.raises(ValueError, match="in_channels=4"):
        model(torch.randn(1, 3, 16, 16), 1, [0])
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 4, 18, 16), 1, [0])
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        model(x, 1, [11])
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, 1, None)
    with pytest.raises(ValueError, match="unconditional"):
        create_model(name, num_classes=0)(x, 1, [0])
    with pytest.raises(ValueError, match="timestep"):
        model(x, torch.tensor([1, 2, 3]), [0])


def test_bad_configs_and_names():
    with pytest.raises(ValueError, match="symmetric"):
        DiCModel(hidden_size=32, depth=[2, 2, 2, 3, 2], num_classes=10)
    with pytest.raises(ValueError, match="5 stages"):
        DiCoModel(hidden_size=32, depth=[1, 1, 1], num_classes=10)
    with pytest.raises(ValueError, match="divisible"):
        DiCModel(hidden_size=36, depth=[1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="dico-xl"):
        create_model("dico-xxl")
    assert set(MODELS) >= {"dic-s", "dic-b", "dic-xl", "dic-h", "dico-s", "dico-b", "dico-l", "dico-xl", "dico-h",
                           "dit-s-2", "dit-b-2", "dit-l-2", "dit-xl-2"}
    assert model_spec("DiT-XL/2")[1]["num_layers"] == 28
