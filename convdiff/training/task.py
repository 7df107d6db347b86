"""What a training run optimises, separated from how the loop runs it.

The loop (loop.py) owns accelerate, batching, gradient accumulation, EMA, checkpoints, logging and the final
save. A task owns the rest: its data, the module it trains (plus any frozen teacher or base model), the loss
of one micro batch and the pipeline it saves. Recipes pick one with `task: <name>` (tasks.py) and pass it
options with `task_options: {...}` (or `task_options.key=value` on the command line).
"""

import torch

from .data import build_dataset
from .samples import save_sample_grid


class Draws:
    """The random draws of one micro step.

    Everything is drawn for the whole global micro batch from the (seed, micro step) generator and then
    sliced to this process, so N processes see the same noise as one process with the same global batch
    and a resumed run replays exactly. Draw in a fixed order inside a task.
    """

    def __init__(self, generator: torch.Generator, global_batch: int, local: slice):
        self.generator, self.global_batch, self.local = generator, global_batch, local

    def take(self, drawn: torch.Tensor) -> torch.Tensor:
        """This process's slice of something drawn for the global batch (first dimension)."""
        return drawn[self.local]

    def randn(self, *shape) -> torch.Tensor:
        return self.take(torch.randn((self.global_batch, *shape), generator=self.generator))

    def rand(self) -> torch.Tensor:
        return self.take(torch.rand(self.global_batch, generator=self.generator))

    def randint(self, low: int, high: int) -> torch.Tensor:
        return self.take(torch.randint(low, high, (self.global_batch,), generator=self.generator))


class TrainingTask:
    """Base class of every task; subclasses fill in build_model, loss and build_pipeline."""

    name = "task"
    # DDP must be told when some parameters can go unused in a step (e.g. temporal layers on single-frame data).
    find_unused_parameters = False
    # Whether the recipe's sample_scheduler names this task's sampler (the layered task has its own scheduler).
    records_sampler = True

    def __init__(self, config):
        self.config = config
        self.options = dict(config.task_options)

    def option(self, key: str, default=None, required: bool = False):
        """A task option with a clear error when a required one is missing."""
        if required and key not in self.options:
            raise ValueError(f"task {self.name!r} needs task_options.{key}=<value> in the recipe or on the command line.")
        return self.options.get(key, default)

    def build_dataset(self):
        return build_dataset(self.config)

    def build_model(self, dataset) -> torch.nn.Module:
        """The module to train: the optimizer takes its parameters that require grad; EMA, DDP and checkpoints wrap it."""
        raise NotImplementedError

    def to_device(self, accelerator) -> None:
        """Move frozen parts (a teacher, a base model) to the device and the weight dtype."""

    def loss(self, model, batch, draws: Draws) -> torch.Tensor:
        """Scalar loss of one micro batch; `model` is the accelerate-prepared module (call it so DDP syncs)."""
        raise NotImplementedError

    def build_pipeline(self, model):
        """The pipeline saved at the end; `model` is the unwrapped trained module with the EMA weights in."""
        raise NotImplementedError

    def record_sampling(self, pipeline) -> None:
        """Make the saved pipeline's default call the recipe's sampling: `sample_scheduler`,
        `sample_num_inference_steps` and `sample_guidance_scale`, with which its grids (and any figures measured
        from the recipe) were made. An `official_sampling` recipe keeps the sample script's sampler and defaults
        (convert/sampling.py); a diffusers teacher's own pipeline (distillation of Stable Diffusion) has none."""
        from ..pipelines.denoising import DenoisingPipeline
        from ..pipelines.schedulers import make_scheduler

        if self.config.official_sampling or not isinstance(pipeline, DenoisingPipeline):
            return
        if self.records_sampler:
            pipeline.scheduler = make_scheduler(self.config.sample_scheduler, pipeline.scheduler)
        pipeline.register_sampling_defaults({"num_inference_steps": self.config.sample_num_inference_steps,
                                             "guidance_scale": self.config.sample_guidance_scale})

    def save_samples(self, pipeline, path) -> None:
        save_sample_grid(pipeline, self.config, path)
