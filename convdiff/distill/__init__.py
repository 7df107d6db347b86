"""ΔConvFusion: swap the self-attention of a diffusers model for ΔConvBlocks (or linear attention) and
distil them from the frozen original (Dong et al., ICCV 2025, arXiv 2504.21292; LinFusion: Liu et al.,
arXiv 2409.02097).

The module swap is model surgery and lives in convdiff/models/convfusion.py; this package holds the training
side (task, losses, feature taps) and the adapter files. The names load on first use, so
`convdiff distill --help` answers without importing diffusers.
"""

from ..lazy import lazy_attributes

_LAZY = {
    **{name: "..models.convfusion" for name in ("KERNEL_PRESETS", "convert_self_attention", "self_attention_sites",
                                                "student_modules", "student_state_dict")},
    **{name: ".io" for name in ("load_adapter", "load_converted", "save_adapter")},
    "distillation_loss": ".losses",
    "FeatureTaps": ".taps",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
