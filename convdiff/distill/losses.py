"""The ΔConvFusion distillation objective (Dong et al., ICCV 2025, arXiv 2504.21292), computed in float32:

    L = w_noise * L_diffusion(student) + w_teacher * MSE(student, teacher)
        + w_feature * sum over layers of MSE(h_student^l, h_teacher^l)          (summed, not averaged)

with w = (1, 1, 1e-3) in the paper. L_diffusion is the objective's own loss (noise MSE for epsilon).
"""

import torch
import torch.nn.functional as F


def feature_loss(student_features: dict, teacher_features: dict) -> torch.Tensor:
    """Sum over tapped layers of the per-layer MSE."""
    if not student_features or set(student_features) != set(teacher_features):
        raise ValueError("Student and teacher must tap the same, non-empty set of layers; differing: "
                         f"{sorted(set(student_features) ^ set(teacher_features))[:3]}.")
    return sum(F.mse_loss(student_features[k].float(), teacher_features[k].float()) for k in sorted(student_features))


def distillation_loss(diffusion_loss, student, teacher, student_features: dict, teacher_features: dict,
                      noise_weight: float = 1.0, teacher_weight: float = 1.0, feature_weight: float = 1e-3):
    """(total loss, {"noise", "teacher", "feature"} detached parts)."""
    output = F.mse_loss(student.float(), teacher.float())
    feature = feature_loss(student_features, teacher_features)
    total = noise_weight * diffusion_loss + teacher_weight * output + feature_weight * feature
    return total, {"noise": diffusion_loss.detach(), "teacher": output.detach(), "feature": feature.detach()}
