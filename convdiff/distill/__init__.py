"""ΔConvFusion: swap the self-attention of a diffusers model for ΔConvBlocks (or linear attention) and
distil them from the frozen original (reference/distill_control.md §1, §2, §5)."""

from .convert import KERNEL_PRESETS, convert_self_attention, self_attention_sites, student_modules, student_state_dict
from .io import load_adapter, load_converted, save_adapter
from .losses import distillation_loss
from .taps import FeatureTaps

__all__ = ["KERNEL_PRESETS", "FeatureTaps", "convert_self_attention", "distillation_loss", "load_adapter",
           "load_converted", "save_adapter", "self_attention_sites", "student_modules", "student_state_dict"]
