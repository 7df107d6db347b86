"""Channels-last conv backbones: weights and activations NHWC in memory, the caller's layout kept outside.

On CPUs, oneDNN convolutions run in NHWC; with NCHW tensors every conv reorders its input and weight first. A
DiC / DiCo keeps its 4-D weights channels_last (at construction and after `from_pretrained`, whose loader builds
fresh tensors), runs its forward on a channels_last input, and returns the output in the caller's layout. The
values are the same convolutions; only the order of memory (and so the rounding of the sums) changes.
Measured in docs/benchmarks.md (training and sampling img/s, NCHW vs channels_last).

`state_dict()` hands out contiguous copies, so safetensors (which refuses strided tensors) saves these weights
as usual and the files stay identical to NCHW ones.

Every convdiff model also reloads exactly (`ExactReloadMixin`): tensors loaded from safetensors can sit at 8-byte
offsets inside the file's mapping, and BLAS takes other kernels for data not aligned to 64 bytes (1-ulp
differences measured on an AVX2 CPU), so each such tensor gets its own allocation after loading.
"""

import itertools

import torch

from .config_bounds import check_folder_config


def _contiguous_state(module, state_dict, prefix, local_metadata):
    for key, value in state_dict.items():
        # keep_vars=True hands out the Parameters themselves (callers match them by identity): leave those
        if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter) and not value.is_contiguous():
            state_dict[key] = value.contiguous()
    return state_dict


class ExactReloadMixin:
    """Mix into a ModelMixin before ModelMixin: `from_pretrained` gives a model that computes bit for bit like the
    one that was saved (`restore_layout`)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """diffusers' loader, after a local folder's config.json passes the size bounds (config_bounds.py)."""
        check_folder_config(cls, pretrained_model_name_or_path, kwargs.get("subfolder"))
        return restore_layout(super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs))


class ChannelsLastMixin(ExactReloadMixin):
    """Mix into a ModelMixin conv backbone before ModelMixin; call `use_channels_last()` at the end of __init__."""

    def use_channels_last(self):
        if not getattr(self, "_channels_last_hooked", False):
            self._register_state_dict_hook(_contiguous_state)
            self._channels_last_hooked = True
        with torch.no_grad():
            for parameter in self.parameters():
                if parameter.ndim == 4:  # conv kernels; inflated 5-D (video) kernels keep their layout
                    parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
        return self


def restore_layout(model):
    """After a loader: every channels-last backbone inside `model` back to NHWC (the loader builds NCHW tensors),
    and every tensor left inside a file mapping in its own aligned allocation, so a reloaded model (or a
    ControlNet / video model around a backbone) computes exactly like the one saved."""
    for module in model.modules():
        if isinstance(module, ChannelsLastMixin):
            module.use_channels_last()
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.data_ptr() % 64:
                tensor.data = tensor.data.clone()
    return model


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def like_caller(out: torch.Tensor, caller_input: torch.Tensor) -> torch.Tensor:
    """The output in the layout the caller gave: NCHW-contiguous in, NCHW-contiguous out."""
    if caller_input.ndim == 4 and caller_input.is_contiguous():
        return out.contiguous()
    return out
