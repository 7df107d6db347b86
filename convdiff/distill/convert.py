"""Old home of the ΔConvFusion module swap, kept so `convdiff.distill.convert` imports keep working.

The swap is model surgery, so it lives with the models (convdiff/models/convfusion.py), where the models that
convert themselves from their config (LabelConditionedUNet) can reach it without importing upward.
"""

from ..models.convfusion import (KERNEL_PRESETS, STUDENT_TYPES, STUDENTS, DeltaConvSelfAttention,  # noqa: F401
                                 LinearSelfAttention, attention_attribute, attention_shape, conversion_of,
                                 convert_self_attention, copy_shared_weights, is_self_attention,
                                 resolve_kernel_sizes, self_attention_sites, student_modules, student_state_dict)
