"""Gradient checkpointing the diffusers way, in one place for every convdiff model.

`model.enable_gradient_checkpointing()` (diffusers' ModelMixin) sets `gradient_checkpointing` and
`_gradient_checkpointing_func` on the models that declare `_supports_gradient_checkpointing`; their forward
passes run each block through `run_block`.
"""

import torch


def run_block(model, block, *args):
    """block(*args), recomputed in the backward pass when `model` has checkpointing on and autograd records."""
    if torch.is_grad_enabled() and model.gradient_checkpointing:
        return model._gradient_checkpointing_func(block, *args)
    return block(*args)
