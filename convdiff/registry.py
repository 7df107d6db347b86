"""Named model sizes: every paper size of DiC and DiCo, diffusers' DiT baselines, and tiny sizes for tests/CPU.

`create_model("dico-xl")` builds the ImageNet-256 latent model; keyword overrides change the config
(`create_model("dic-tiny", in_channels=1, sample_size=28, num_classes=10, learn_sigma=False)`).
"""

import difflib

from diffusers import DiTTransformer2DModel, UNet2DModel

from .models.config_bounds import check_model_config
from .models.dic import DiCModel
from .models.dico import DiCoModel
from .models.diffit import DiffiTModel
from .models.diffit_unet import DiffiTUNetModel
from .models.label_conditioned_unet import LabelConditionedUNet
from .models.layered_unet import LayeredUNetModel


def _dit(heads: int, head_dim: int, layers: int) -> dict:
    return dict(num_attention_heads=heads, attention_head_dim=head_dim, num_layers=layers, in_channels=4,
                out_channels=8, sample_size=32, patch_size=2)


_MNIST_CONVDIFF = dict(in_channels=1, sample_size=28, num_classes=10, learn_sigma=False)

MODELS = {
    # DiC (Tian et al., CVPR 2025, arXiv 2501.00603; official dic_models.py): widths hidden_size * [1, 2, 4, 2, 1],
    # skip stride 3.
    "dic-s": (DiCModel, dict(hidden_size=96, depth=[6, 6, 5, 6, 6])),
    "dic-b": (DiCModel, dict(hidden_size=192, depth=[6, 6, 5, 6, 6])),
    "dic-xl": (DiCModel, dict(hidden_size=384, depth=[7, 7, 8, 7, 7])),
    "dic-h": (DiCModel, dict(hidden_size=384, depth=[14, 14, 10, 14, 14])),
    # DiCo (Ai et al., NeurIPS 2025, arXiv 2505.11196), Table 6.
    "dico-s": (DiCoModel, dict(hidden_size=128, depth=[5, 4, 4, 4, 4], mlp_ratio=2)),
    "dico-b": (DiCoModel, dict(hidden_size=256, depth=[5, 4, 4, 4, 4], mlp_ratio=2)),
    "dico-l": (DiCoModel, dict(hidden_size=352, depth=[9, 8, 9, 8, 9], mlp_ratio=2)),
    "dico-xl": (DiCoModel, dict(hidden_size=416, depth=[9, 9, 10, 9, 9], mlp_ratio=2)),
    "dico-h": (DiCoModel, dict(hidden_size=416, depth=[14, 12, 10, 12, 14], mlp_ratio=4)),
    # diffusers' DiT as the baseline (its embedder is duplicated in every block, so it has more parameters
    # than the official DiT with the same FLOPs: see docs/benchmarks.md).
    "dit-s-2": (DiTTransformer2DModel, _dit(6, 64, 12)),
    "dit-b-2": (DiTTransformer2DModel, _dit(12, 64, 12)),
    "dit-l-2": (DiTTransformer2DModel, _dit(16, 64, 24)),
    "dit-xl-2": (DiTTransformer2DModel, _dit(16, 72, 28)),
    # Tiny sizes for tests and CPU demos.
    "dic-tiny": (DiCModel, dict(hidden_size=32, depth=[2, 2, 2, 2, 2], num_classes=10)),
    "dico-tiny": (DiCoModel, dict(hidden_size=32, depth=[1, 1, 1, 1, 1], mlp_ratio=2, num_classes=10)),
    "dit-tiny": (DiTTransformer2DModel, dict(_dit(2, 16, 2), num_embeds_ada_norm=10)),
    # MNIST-shaped (1x28x28, 10 classes, epsilon only) and matched in parameters to dic-tiny at in_channels=1
    # (1.67M), for the quality-per-compute training benchmark (scripts/benchmark_training.py).
    "dic-mnist": (DiCModel, dict(hidden_size=32, depth=[2, 2, 2, 2, 2], **_MNIST_CONVDIFF)),  # 1.67M
    "dico-mnist": (DiCoModel, dict(hidden_size=40, depth=[1, 1, 2, 1, 1], mlp_ratio=2, **_MNIST_CONVDIFF)),  # 1.70M
    "dit-mnist": (DiTTransformer2DModel, dict(num_attention_heads=2, attention_head_dim=64, num_layers=5, in_channels=1,
                                              out_channels=1, sample_size=28, patch_size=2, num_embeds_ada_norm=10)),  # 1.77M
    # diffusers' DDPM-style UNet: 28 -> 14 -> 7, attention at 7x7 and in the middle block; a plain label table.
    "unet-mnist": (UNet2DModel, dict(sample_size=28, in_channels=1, out_channels=1, block_out_channels=[32, 64, 64],
                                     layers_per_block=2, down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
                                     up_block_types=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
                                     num_class_embeds=10)),  # 1.62M
    # Layered U-Net (Khwaja et al., arXiv 2407.06079): a head in and out at every scale; set cross_attention_dim
    # to the text encoder's width for text conditioning. MNIST: 1x32x32 (padded digits), scales 32/16/8.
    "layered-unet-tiny": (LayeredUNetModel, dict(sample_size=16, in_channels=3, num_scales=2, block_out_channels=[16, 32],
                                                 layers_per_block=1, attention_resolutions=[8], attention_head_dim=8,
                                                 norm_num_groups=8, num_classes=10)),
    "layered-unet-mnist": (LayeredUNetModel, dict(sample_size=32, in_channels=1, num_scales=3, block_out_channels=[32, 64, 64],
                                                  layers_per_block=1, attention_resolutions=[8], attention_head_dim=32,
                                                  norm_num_groups=8, num_classes=10)),
    # DiffiT latent (Hatamizadeh et al., ECCV 2024, arXiv 2312.02139): XL is the released model (561.33M at 256,
    # global TMSA with a relative position bias over the 16x16 grid; 32x32 at 512). S/B/L are not in the paper: DiT's widths/depths.
    "diffit-s": (DiffiTModel, dict(hidden_size=384, depth=12, num_heads=6)),
    "diffit-b": (DiffiTModel, dict(hidden_size=768, depth=12, num_heads=12)),
    "diffit-l": (DiffiTModel, dict(hidden_size=1024, depth=24, num_heads=16)),
    "diffit-xl": (DiffiTModel, dict(hidden_size=1152, depth=28, num_heads=16)),
    "diffit-xl-512": (DiffiTModel, dict(hidden_size=1152, depth=28, num_heads=16, sample_size=64)),
    "diffit-tiny": (DiffiTModel, dict(hidden_size=32, depth=2, num_heads=2, sample_size=16, num_classes=10)),
    "diffit-mnist": (DiffiTModel, dict(hidden_size=128, depth=6, num_heads=4, **_MNIST_CONVDIFF)),  # 1.58M, 14x14 tokens
    # Image-space DiffiT U-Net (arXiv 2312.02139, App. H: 128-channel tokenizer, 256 channels,
    # 4 ResBlocks per stage, windows 4 / 8; unconditional like the paper's CIFAR-10 and FFHQ-64 models).
    "diffit-unet-cifar10": (DiffiTUNetModel, dict(sample_size=32, block_out_channels=[256] * 3, layers_per_block=[4] * 3,
                                                  window_size=4)),  # 45.4M
    "diffit-unet-ffhq64": (DiffiTUNetModel, dict(sample_size=64, block_out_channels=[256] * 4, layers_per_block=[4] * 4,
                                                 window_size=8)),  # 59.9M
    "diffit-unet-tiny": (DiffiTUNetModel, dict(sample_size=16, base_channels=16, block_out_channels=[32, 32],
                                               layers_per_block=[1, 1], mid_layers=1, num_heads=2, window_size=4,
                                               num_classes=10)),
    "diffit-unet-mnist": (DiffiTUNetModel, dict(sample_size=28, in_channels=1, base_channels=32, block_out_channels=[64, 64],
                                                layers_per_block=[2, 2], mid_layers=1, num_heads=2, window_size=7,
                                                num_classes=10)),  # 1.07M, 7x7 windows at 28 and 14
    # A tiny SD-style UNet2DConditionModel (self- + cross-attention, label tokens as context): the attention teacher
    # of the ΔConvFusion MNIST demo (docs/convfusion.md). Self-attention at 14x14 and in the 7x7 middle block.
    "sd-unet-mnist": (LabelConditionedUNet, dict(attention_levels=[False, True, False])),
}

# Parameter counts of the official models (the papers' tables and the released code; DiCo counts are its
# training logs' exact ones).
PAPER_PARAMS = {
    "dic-s": 32.84e6, "dic-b": 129.53e6, "dic-xl": 702.27e6, "dic-h": 1034.52e6,
    "dico-s": 33_137_672, "dico-b": 129_992_712, "dico-l": 463_897_992, "dico-xl": 701_151_368, "dico-h": 1037.4e6,
    "diffit-xl": 561_330_144, "diffit-xl-512": 563.56e6,  # DiffiT: counted incl. the frozen pos_embed Parameter
}


def normalize_name(name: str) -> str:
    return name.strip().lower().replace("/", "-").replace("_", "-")


def model_spec(name: str):
    """(class, config dict) for a registered name; a clear error with close matches otherwise."""
    key = normalize_name(name)
    if key not in MODELS:
        close = difflib.get_close_matches(key, MODELS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown model {name!r}.{hint} Registered models: {', '.join(sorted(MODELS))}.")
    cls, config = MODELS[key]
    return cls, dict(config)


def create_model(name: str, **overrides):
    """Build a freshly initialised model from a registered name, with config overrides."""
    cls, config = model_spec(name)
    config.update(overrides)
    check_model_config(cls, config, f"model {name!r} (model_overrides {overrides})" if overrides else f"model {name!r}")
    return cls(**config)
