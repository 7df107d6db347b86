"""Classifier-free label dropout decided by the training loop (so it replays exactly on resume).

convdiff backbones take the drop mask as `force_drop_ids`; diffusers' DiT drops labels inside its own
embedders with the global RNG, so there we turn that off and substitute the null id ourselves.
diffusers' UNet2DModel (`num_class_embeds`, class_embed_type None) has no null row, so it trains without dropout.
"""

import torch
from diffusers.models.embeddings import LabelEmbedding as DiffusersLabelEmbedding

from ..nn.inputs import class_info


def null_class_and_dropout(model):
    """(number of classes, null id or None, dropout probability) for convdiff and diffusers models.

    Classes and null id are read as the pipelines read them (nn/inputs.py `class_info`); the dropout rate is
    the model's own (convdiff: class_dropout_prob; diffusers' DiT: its label embedders' rate)."""
    config = model.config
    num_classes, null_id = class_info(config)
    if "num_classes" in config:
        # A convdiff model with label dropout draws a drop mask even when unconditional (null id 0): the draw is
        # part of the run's random stream, and leaving it out would change every draw after it.
        dropout = config.class_dropout_prob
        return num_classes, (config.num_classes if dropout > 0 else None), dropout
    embedders = [m for m in model.modules() if isinstance(m, DiffusersLabelEmbedding)]
    return num_classes, null_id, (embedders[0].dropout_prob if embedders else 0.0)


def disable_internal_label_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, DiffusersLabelEmbedding):
            module.dropout_prob = 0.0


def conditioning_kwargs(model, labels, drop_mask):
    """Keyword arguments that condition `model` on `labels` with the dropped ones replaced by the null class."""
    if labels is None:
        return {"class_labels": None}
    if "num_classes" in model.config:
        return {"class_labels": labels, "force_drop_ids": drop_mask.long()}
    _, null_id, _ = null_class_and_dropout(model)
    if null_id is None:  # no null class to drop to (UNet2DModel's plain label table)
        return {"class_labels": labels}
    return {"class_labels": torch.where(drop_mask, torch.full_like(labels, null_id), labels)}
