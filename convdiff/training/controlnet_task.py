"""Train a ControlNet on a frozen base pipeline (`task: controlnet`), diffusers' train_controlnet recipe
(diffusers `examples/controlnet/train_controlnet.py`; Zhang et al., ICCV 2023) on our loop.

The base model comes from a pipeline folder (`task_options.base`, e.g. pipelines/dic-mnist), is frozen and
cast to the weight dtype of mixed precision; the ControlNet (`ControlNet.from_backbone`, or a saved one from
`task_options.controlnet`) is what the loop optimises, in fp32. Each micro batch: targets x0 in [-1, 1], the
conditioning image computed from them in [0, 1] (an edge map: `task_options.condition` = canny | sobel),
a `task_options.empty_condition_prob` share of conditioning images blanked (diffusers'
proportion_empty_prompts, for guess mode / weak conditions), label dropout as in the denoise task, then the
base model's own objective on its output with the ControlNet residuals added.

A video base (a `VideoPipeline` folder such as pipelines/video-dic-mnist) trains a video ControlNet: the data
are moving-digit clips (`num_frames`, `frame_size`, `max_speed`, `length` as in task `video`), the condition is
one edge map per frame (B, C, F, H, W), and the ControlNet copies the inflated model's encoder half, temporal
layers included, so it sees the whole clip (docs/controlnet.md, "Controlled video").

Options (task_options): base (required), controlnet (start from a saved ControlNet), condition ("canny"),
condition_options ({} = the detector's defaults), empty_condition_prob (0.0), conditioning_embedding_channels
(None: ControlNet.from_backbone's choice), preview_count (10 conditions in the sample grid).
"""

from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..data.edges import EDGE_DETECTORS, edge_map
from ..models.controlnet import ControlNet
from ..nn.layouts import frames_to_video, video_to_frames
from ..pipelines.class_conditional import ClassConditionalPipeline, model_parameterisation
from ..pipelines.controlnet import ControlNetPipeline
from ..pipelines.schedulers import make_scheduler
from ..pipelines.video import VideoPipeline
from ..pipelines.video_controlnet import VideoControlNetPipeline
from .denoise_task import DenoiseTask, check_model_fits_data
from .objectives import make_objective
from ..grids import make_grid
from .task import Draws

WEIGHT_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def is_video_pipeline(folder) -> bool:
    """Whether a saved pipeline folder holds a video pipeline (its model_index.json class)."""
    from ..files import read_json

    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise ValueError(f"task_options.base={str(folder)!r} is not a saved pipeline folder (no model_index.json).")
    name = read_json(index, "a pipeline index").get("_class_name")
    return (name[-1] if isinstance(name, list) else name) == "VideoPipeline"


class ControlNetTask(DenoiseTask):
    name = "controlnet"

    @cached_property
    def video(self) -> bool:
        """Whether the base is a video pipeline: then the data are clips and the conditions one map per frame."""
        return is_video_pipeline(self.option("base", required=True))

    def build_dataset(self):
        if not self.video:
            return super().build_dataset()
        from ..data.moving_digits import MovingDigits

        o = self.option
        return MovingDigits("train", num_frames=o("num_frames", 8), frame_size=o("frame_size", 28),
                            length=o("length", 10_000), max_speed=o("max_speed", 1.5), seed=self.config.seed)

    def build_model(self, dataset):
        config = self.config
        base_path = self.option("base", required=True)
        self.condition_name = self.option("condition", "canny")
        if self.condition_name not in EDGE_DETECTORS:
            raise ValueError(f"task_options.condition must be one of {', '.join(EDGE_DETECTORS)}; got {self.condition_name!r}.")
        self.condition_options = dict(self.option("condition_options", {}) or {})
        self.empty_prob = float(self.option("empty_condition_prob", 0.0))
        if not 0.0 <= self.empty_prob <= 1.0:
            raise ValueError(f"task_options.empty_condition_prob must lie in [0, 1]; got {self.empty_prob}.")

        self.base_pipeline = (VideoPipeline if self.video else ClassConditionalPipeline).from_pretrained(base_path)
        self.base = self.base_pipeline.transformer.requires_grad_(False).eval()
        check_model_fits_data(self.base, dataset, config)
        self.base.eval()  # the check leaves it in train mode; the frozen base always runs in eval mode
        self.setup_conditioning(self.base)
        self.flip_pairs = getattr(dataset, "has_flip_pairs", False)
        kind = model_parameterisation(self.base.config) or config.objective
        learned_sigma = self.base.config.out_channels == 2 * self.base.config.in_channels
        self.objective = make_objective(kind, learned_sigma, config.data != "latents")

        channels = dataset.sample_shape[0]
        if self.option("controlnet"):
            controlnet = ControlNet.from_pretrained(self.option("controlnet"))
        else:
            controlnet = ControlNet.from_backbone(
                self.base, conditioning_channels=channels,
                conditioning_embedding_channels=self.option("conditioning_embedding_channels"))
        controlnet.check_backbone(self.base)
        picks = np.linspace(0, len(dataset) - 1, int(self.option("preview_count", 10))).round().astype(int)
        self.preview = [dataset[int(i)] for i in picks]
        return controlnet.float().train()

    def to_device(self, accelerator) -> None:
        self.base.to(accelerator.device, dtype=WEIGHT_DTYPES[accelerator.mixed_precision])

    def condition(self, x0: torch.Tensor) -> torch.Tensor:
        """The conditioning image of targets in [-1, 1]: their edge map, in [0, 1]; clips (B, C, F, H, W) get
        one per frame."""
        if x0.dim() == 5:
            return frames_to_video(self.condition(video_to_frames(x0)), x0.shape[0])
        return edge_map((x0.float() + 1) / 2, self.condition_name, **self.condition_options)

    def loss(self, model, batch, draws: Draws):
        inputs = self.draw_inputs(batch, draws, self.base)
        empty = draws.rand() < self.empty_prob
        x0, x_t, model_t, cond = inputs["x0"], inputs["x_t"], inputs["model_t"], inputs["cond"]
        image = self.condition(x0)
        empty = empty.to(x0.device).reshape(-1, *[1] * (image.dim() - 1))
        image = torch.where(empty, torch.zeros_like(image), image)
        down, mid = model(x_t, model_t, image, return_dict=False, **cond)
        dtype = self.base.dtype
        out = self.base(x_t.to(dtype), model_t, down_block_additional_residuals=[d.to(dtype) for d in down],
                        mid_block_additional_residual=mid.to(dtype), **cond).sample
        return self.objective.loss(out, x0, inputs["noise"], x_t, inputs["t"]).mean()

    def build_pipeline(self, model):
        return (VideoControlNetPipeline if self.video else ControlNetPipeline).from_base(self.base_pipeline, model)

    def save_samples(self, pipeline, path) -> None:
        """Pairs (condition | controlled sample) for preview digits of the data, side by side."""
        x0 = torch.stack([item[0] for item in self.preview])
        labels = [int(item[1]) for item in self.preview] if self.num_classes else None
        image = self.condition(x0)
        scheduler = pipeline.scheduler
        pipeline.scheduler = make_scheduler(self.config.sample_scheduler, scheduler)
        pipeline.set_progress_bar_config(disable=True)
        try:
            out = pipeline(image, class_labels=labels, batch_size=None if labels else len(x0),
                           num_inference_steps=self.config.sample_num_inference_steps,
                           guidance_scale=self.config.sample_guidance_scale,
                           generator=torch.Generator().manual_seed(self.config.seed), output_type="np")
            samples = out.frames if self.video else out.images
        finally:
            pipeline.scheduler = scheduler
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.video:  # per clip a row of conditions, then a row of its sampled frames
            conditions = image.movedim(1, -1).cpu().numpy()  # (N, F, H, W, C)
            rows = np.stack([conditions, samples], axis=1).reshape(-1, *samples.shape[2:])
            make_grid(rows, columns=samples.shape[1]).save(path)
            return
        conditions = image.mean(1, keepdim=True).expand(-1, samples.shape[-1], -1, -1).permute(0, 2, 3, 1).cpu().numpy()
        pairs = np.stack([conditions, samples], axis=1).reshape(-1, *samples.shape[1:])
        make_grid(pairs, columns=4).save(path)
