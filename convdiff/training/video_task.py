"""`task: video`: train a video (B, C, F, H, W) or 4D (B, C, V, T, H, W) model inflated from a 2D backbone.

The 2D backbone is either a saved pipeline folder (`task_options.base: pipelines/dic-mnist`, its transformer
is loaded) or a fresh registry model (`model:` + `model_overrides:`, trained from scratch). It is inflated
with `convdiff.models.video.inflate`; with `freeze_spatial: true` only the new temporal / view layers train
(the loop's optimizer and EMA take the parameters that require grad). The loss is the recipe's objective on
whole clips, with classifier-free label dropout decided by the step's draws (replays exactly on resume).

task_options (all optional):
    mode: video | 4d                                   (default video)
    data: moving_digits | multiview | video_folder     (default moving_digits for video, multiview for 4d;
                                                        video_folder reads `data_path`)
    base: a pipeline folder whose transformer is the 2D model to inflate
    temporal: p3d | attention | [p3d, attention]      (default attention)
    view: attention | two-stream | fused               (4d only; default attention)
    camera_dim: 12 or null                             (4d; default 12, the flattened 3x4 extrinsics)
    max_frames, max_views: limits of the new layers    (default: the data's frames / views)
    freeze_spatial: train only the new layers          (default true with `base`, else false)
    given_cells: first_view | grid                     (4d: which cells a conditioned clip gets clean: view 0's
                                                        whole video, or 4Real-Video's grid of view 0's video
                                                        (first row) and every view at time 0 (first column);
                                                        default first_view)
    first_view_prob: 4d: probability that a clip's given cells are given clean, flagged as known (`known_cells`)
                     and left out of the loss; the saved pipeline then samples with first_view_mode="clean"
                                                       (default 0: every cell noised)
    num_frames, frame_size, num_digits, length, max_speed       (moving_digits)
    num_views, image_size, max_objects, random_azimuth, cache   (multiview)
    frame_stride, resolution, channels, clips_per_video, timeout (video_folder)
    sample_videos: videos in the sample image (default 8)
    conditioning: class | text                         (default class; text: a frozen CLIP text encoder's pooled
                                                        prompt embedding, added to the timestep embedding by
                                                        zero-initialised layers; a class-conditional base then
                                                        gets its null class)
    text_encoder: tiny | contrastive | <folder>        (text: "tiny" a random tiny CLIP, "contrastive" the same
                                                        trained beforehand to tell the captions apart
                                                        (caption_encoder.py; `text_encoder_steps`, default 2000;
                                                        kept in <output_dir>/caption_encoder for resumes), or a
                                                        local CLIP folder; always frozen)
    text_hidden_size: 32                               (text: width of the tiny encoders)
    temporal_text: false                               (text: the prompt also modulates the temporal attention)
    caption_template: "a digit {name} moving {direction}"  (text: captions from the label and, for
                                                        motion=directed moving digits, the direction)
    text_dropout: 0.1                                  (text: captions replaced by "" for classifier-free guidance)
    motion: bounce | directed                          (moving_digits; directed: one of four straight motions)
    shared_noise: 0.0                                  (fraction of the noise variance shared by a clip's frames
                                                        (mixed noise, PYoCo: Ge et al., ICCV 2023), also the saved
                                                        pipeline's sampling default)
"""

import json
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from PIL import Image

from ..data.mnist import DIGIT_NAMES
from ..files import replace_folder
from ..pipelines.text_encoders import encode_pooled, frozen_text_encoder, tiny_text_encoder
from ..pipelines.video import mix_noise
from .caption_encoder import pretrain_caption_encoder
from ..registry import create_model
from .denoise_task import DenoiseTask, model_config_holder, model_overrides_for
from .objectives import make_objective
from .task import Draws

MODES = ("video", "4d")
CONDITIONINGS = ("class", "text")
DATA_KINDS = ("moving_digits", "multiview", "video_folder")
GIVEN_CELLS = ("first_view", "grid")


def load_base_transformer(folder):
    """The transformer of a saved pipeline folder (any convdiff / diffusers pipeline class)."""
    from diffusers import DiffusionPipeline  # noqa: F401

    from ..pipelines import ClassConditionalPipeline

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"task_options.base={str(folder)!r} is not a saved pipeline folder (no model_index.json).")
    return ClassConditionalPipeline.from_pretrained(folder).transformer


class VideoTask(DenoiseTask):
    name = "video"
    # Temporal layers skip single-frame grids and view layers single-view ones (V=1 / T=1 data), so under DDP
    # some parameters may get no gradient in a step.
    find_unused_parameters = True

    def __init__(self, config):
        super().__init__(config)
        self.mode = self.option("mode", "video")
        if self.mode not in MODES:
            raise ValueError(f"task_options.mode must be one of {MODES}, got {self.mode!r}.")
        self.data_kind = self.option("data", "multiview" if self.mode == "4d" else "moving_digits")
        if self.data_kind not in DATA_KINDS:
            raise ValueError(f"task_options.data must be one of {DATA_KINDS}, got {self.data_kind!r}.")
        if (self.mode == "4d") != (self.data_kind == "multiview"):
            raise ValueError(f"mode={self.mode!r} does not fit data={self.data_kind!r}: 4d trains on multiview data, "
                             "video on moving_digits or video_folder.")
        self.conditioning = self.option("conditioning", "class")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"task_options.conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}.")
        self.uses_text = self.conditioning == "text"
        self.caption_template = self.option("caption_template", "a digit {name} moving {direction}")
        self.text_dropout = float(self.option("text_dropout", 0.1))
        self.tokenizer = self.text_encoder = None
        self.given_cells = self.option("given_cells", "first_view")
        if self.given_cells not in GIVEN_CELLS:
            raise ValueError(f"task_options.given_cells must be one of {GIVEN_CELLS}, got {self.given_cells!r}.")
        self.shared_noise = float(self.option("shared_noise", 0.0))
        if not 0.0 <= self.shared_noise < 1.0:
            raise ValueError(f"task_options.shared_noise must be in [0, 1), got {self.shared_noise}.")
        self.first_view_prob = float(self.option("first_view_prob", 0.0))
        if not 0.0 <= self.first_view_prob <= 1.0 or (self.first_view_prob and self.mode != "4d"):
            raise ValueError(f"task_options.first_view_prob must be in [0, 1] and needs mode=4d, got "
                             f"{self.first_view_prob} with mode={self.mode!r}.")

    # ---- data ---------------------------------------------------------------------------------------------
    def build_dataset(self):
        o, seed = self.option, self.config.seed
        if self.data_kind == "moving_digits":
            from ..data.moving_digits import MovingDigits

            return MovingDigits("train", num_frames=o("num_frames", 8), frame_size=o("frame_size", 28),
                                num_digits=o("num_digits", 1), length=o("length", 10_000),
                                max_speed=o("max_speed", 1.5), seed=seed, motion=o("motion", "bounce"))
        if self.data_kind == "multiview":
            from ..data.multiview import MultiViewObjects

            return MultiViewObjects(num_views=o("num_views", 4), num_frames=o("num_frames", 4),
                                    image_size=o("image_size", 16), max_objects=o("max_objects", 2),
                                    random_azimuth=o("random_azimuth", True), length=o("length", 2_000),
                                    cache=o("cache", True), seed=seed)
        from ..data.video_folder import VideoFolderDataset

        if not self.config.data_path:
            raise ValueError("task_options.data=video_folder needs data_path=<folder of videos>.")
        return VideoFolderDataset(self.config.data_path, num_frames=o("num_frames", 16),
                                  frame_stride=o("frame_stride", 1), resolution=o("resolution", 64),
                                  channels=o("channels", 3), random_crop=o("random_crop", False),
                                  clips_per_video=o("clips_per_video", 1), timeout=o("timeout", 30.0), seed=seed)

    # ---- model --------------------------------------------------------------------------------------------
    def build_model(self, dataset):
        from ..models.video import inflate

        config, base_folder = self.config, self.option("base")
        base = load_base_transformer(base_folder) if base_folder else create_model(config.model,
                                                                                   **model_overrides_for(config))
        shape = dataset.sample_shape  # (C, F, H, W) or (C, V, T, H, W)
        kwargs = dict(temporal=self.option("temporal", "attention"), max_frames=self.option("max_frames", shape[-3]),
                      freeze_spatial=self.option("freeze_spatial", bool(base_folder)))
        if self.mode == "4d":
            kwargs.update(view=self.option("view", "attention"), camera_dim=self.option("camera_dim", 12),
                          max_views=self.option("max_views", shape[1]))
        if self.uses_text:
            self.tokenizer, self.text_encoder = self.build_text_encoder(dataset)
            kwargs["text_dim"] = self.text_encoder.config.hidden_size
            kwargs["temporal_text"] = bool(self.option("temporal_text", False))
        model = inflate(base, to=self.mode, **kwargs)
        if model.config.in_channels != shape[0]:
            raise ValueError(f"The model takes {model.config.in_channels}-channel frames but the data gives {shape[0]}: "
                             f"set model_overrides.in_channels={shape[0]} (or use a matching base pipeline).")
        self.setup_conditioning(model)
        self.objective = make_objective(config.objective, model.config.out_channels == 2 * model.config.in_channels,
                                        pixel_space=True, timestep_sampling=config.timestep_sampling)
        self.check_model_fits_data(model, dataset)
        return model

    def build_text_encoder(self, dataset):
        """The frozen (tokenizer, text encoder) of task_options.text_encoder; "contrastive" pretrains the tiny
        one on this data's clips and captions, once per output folder (a resumed run reads it back)."""
        source, width, seed = self.option("text_encoder", "tiny"), int(self.option("text_hidden_size", 32)), self.config.seed
        if source != "contrastive":
            return frozen_text_encoder(source, width, seed)
        folder = Path(self.config.output_dir) / "caption_encoder"
        if (folder / "text_encoder").is_dir():
            return frozen_text_encoder(str(folder), width, seed)
        tokenizer, text_encoder = tiny_text_encoder(hidden_size=width, seed=seed)
        captions, caption_index = self.caption_set()
        heldout = type(dataset)("heldout", num_frames=dataset.num_frames, frame_size=dataset.frame_size,
                                num_digits=dataset.num_digits, length=400, max_speed=dataset.max_speed,
                                overshoot=dataset.overshoot, seed=seed + 1, motion=dataset.motion)
        steps = int(self.option("text_encoder_steps", 2000))
        report = pretrain_caption_encoder(tokenizer, text_encoder, dataset, caption_index, captions, steps=steps,
                                          seed=seed, heldout=heldout)
        if PartialState().is_main_process:  # every process trains the same encoder; one writes it

            def write(partial):
                tokenizer.save_pretrained(Path(partial) / "tokenizer")
                text_encoder.save_pretrained(Path(partial) / "text_encoder")
                (Path(partial) / "report.json").write_text(json.dumps(report, indent=2) + "\n")

            replace_folder(folder, write)
        return tokenizer, text_encoder.requires_grad_(False)

    def caption_set(self):
        """(every caption the data can have, caption index of a (label, direction) item) for contrastive pretraining."""
        from ..data.moving_digits import DIRECTIONS

        if self.data_kind != "moving_digits":
            raise ValueError("task_options.text_encoder=contrastive pretrains on captioned moving digits "
                             "(data: moving_digits); give a CLIP folder or 'tiny' for other data.")
        directions = len(DIRECTIONS) if "{direction}" in self.caption_template else 1
        labels = [d for d in range(10) for _ in range(directions)]
        moves = [m for _ in range(10) for m in range(directions)] if directions > 1 else None
        return self.captions(labels, moves), lambda label, direction=0: directions * int(label) + int(direction) % directions

    def to_device(self, accelerator) -> None:
        if self.text_encoder is not None:
            self.text_encoder.to(accelerator.device)

    def check_model_fits_data(self, model, dataset):
        batch = torch.utils.data.default_collate([dataset[0]])
        x0, labels, extra = self.unpack(batch)
        if self.uses_text:
            extra["text_embeds"] = self.text_embeds(extra.pop("captions"), torch.zeros(1, dtype=torch.bool), x0.device)
        try:
            with torch.no_grad():
                model.eval()(x0, torch.zeros(1, dtype=torch.long), **self.label_kwargs(labels, torch.zeros(1, dtype=torch.bool)),
                             **extra)
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"The inflated model does not fit data samples of shape {tuple(x0.shape[1:])}: {error}") from error
        finally:
            model.train()

    # ---- loss ---------------------------------------------------------------------------------------------
    def unpack(self, batch):
        """(x0, labels, extra model kwargs) from a (clip, label[, direction]) tuple or a multiview dict; with text
        conditioning the extras hold the clips' captions (encoded in `loss`, after the step's caption dropout)."""
        if isinstance(batch, dict):
            extra = {"timestamps": batch["timestamps"]}
            if self.option("camera_dim", 12) is not None:
                extra["cameras"] = batch["cameras"]
            x0, labels, directions = batch["video"], batch["label"], None
        else:
            x0, labels, *rest = batch
            extra, directions = {}, (rest[0] if rest else None)
        if self.uses_text:
            extra["captions"] = self.captions(labels, directions)
        return x0, labels, extra

    def captions(self, labels, directions=None) -> list[str]:
        """Captions from the caption template, the digit names and (directed moving digits) the directions."""
        from ..data.moving_digits import DIRECTIONS

        labels = [int(y) for y in labels]
        directions = [None] * len(labels) if directions is None else [int(d) for d in directions]
        if "{direction}" in self.caption_template and None in directions:
            raise ValueError(f"caption_template {self.caption_template!r} names {{direction}}, but the data has no "
                             "directions: use task_options.motion=directed (moving_digits) or drop {direction}.")
        return [self.caption_template.format(name=DIGIT_NAMES[y] if y < len(DIGIT_NAMES) else y, label=y,
                                             direction=None if d is None else DIRECTIONS[d])
                for y, d in zip(labels, directions)]

    def text_embeds(self, captions, drop, device) -> torch.Tensor:
        """Pooled embeddings of the captions, "" where `drop` (classifier-free guidance's unconditional prompt)."""
        captions = ["" if dropped else caption for caption, dropped in zip(captions, drop.tolist())]
        with torch.no_grad():
            return encode_pooled(self.tokenizer, self.text_encoder, captions, device)

    def label_kwargs(self, labels, drop):
        """Labels with the step's dropout mask (the inflated model then draws no dropout of its own); a
        text-conditioned model's class-conditional base always gets its null class."""
        if not self.num_classes:
            return {"class_labels": None}
        if self.uses_text:
            drop = torch.ones_like(drop)
        return {"class_labels": torch.as_tensor(labels, device=drop.device).long(), "force_drop_ids": drop.long()}

    def loss(self, model, batch, draws: Draws):
        x0, labels, extra = self.unpack(batch)
        noise = draws.randn(*x0.shape[1:]).to(x0.device)
        t = draws.take(self.objective.sample_timesteps(draws.global_batch, draws.generator)).to(x0.device)
        drop = self.label_drop(draws, len(x0)).to(x0.device)
        if self.shared_noise:  # drawn after the others, so recipes without it replay as before
            # one map per clip (per view in 4D), shared along the time axis (-3) as the pipelines share it
            common = draws.randn(*x0.shape[1:-3], *x0.shape[-2:]).to(x0.device).unsqueeze(-3)
            noise = mix_noise(noise, common, self.shared_noise)
        x_t, model_t = self.objective.noisy_input(x0, noise, t)
        given = None
        if self.first_view_prob:  # drawn after the others, so recipes without it replay as before
            given = (draws.rand() < self.first_view_prob).to(x0.device)
            x_t, extra = give_cells(x0, x_t, given, extra, self.given_cells)
        if self.uses_text:  # drawn last, so recipes without text replay their old draws exactly
            extra["text_embeds"] = self.text_embeds(extra.pop("captions"), draws.rand() < self.text_dropout, x0.device)
        out = model(x_t, model_t.to(x0.device), **self.label_kwargs(labels, drop), **extra).sample
        loss = self.objective.loss(out, x0, noise, x_t, t)
        if given is not None:  # given cells are no target: those clips' loss is on the other cells only
            rest = unknown_cells(self.given_cells)
            others = self.objective.loss(out[rest], x0[rest], noise[rest], x_t[rest], t)
            loss = torch.where(given, others, loss)
        return loss.mean()

    # ---- pipeline and samples -----------------------------------------------------------------------------
    def build_pipeline(self, model):
        from ..pipelines.video import FourDPipeline, VideoPipeline

        if self.mode == "4d":
            return FourDPipeline(transformer=model, scheduler=self.objective.make_scheduler(),
                                 first_view_mode="clean" if self.first_view_prob else "replace")
        return VideoPipeline(transformer=model, scheduler=self.objective.make_scheduler(),
                             text_encoder=self.text_encoder, tokenizer=self.tokenizer)

    def record_sampling(self, pipeline) -> None:
        super().record_sampling(pipeline)
        if self.shared_noise:
            pipeline.register_sampling_defaults({**pipeline.config.sampling_defaults, "shared_noise": self.shared_noise})

    def sample_prompts(self, num_videos: int) -> list[str] | None:
        """Captions for the sample videos: digits 0, 1, ... with the four directions in turn (text models)."""
        if not self.uses_text:
            return None
        directions = [i % 4 for i in range(num_videos)] if "{direction}" in self.caption_template else None
        return self.captions([i % 10 for i in range(num_videos)], directions)

    def save_samples(self, pipeline, path) -> None:
        num_videos = self.option("sample_videos", 8)
        save_video_samples(pipeline, self.mode, self.build_dataset(), self.config, path, num_videos=num_videos,
                           prompts=self.sample_prompts(num_videos),
                           given_cells=self.given_cells if self.first_view_prob else None)


def give_cells(x0, x_t, given, extra, layout: str = "first_view"):
    """x_t with the `layout` cells of the `given` clips ((B,) bool) clean, and extra with their `known_cells`
    (B, V, T): view 0's video ("first_view"), or view 0's video and every view at time 0 ("grid")."""
    cells = torch.zeros(x0.shape[0], x0.shape[2], x0.shape[3], dtype=torch.bool, device=x0.device)
    cells[:, 0] = given[:, None]
    if layout == "grid":
        cells[:, :, 0] = given[:, None]
    return torch.where(cells[:, None, :, :, None, None], x0, x_t), dict(extra, known_cells=cells)


def unknown_cells(layout: str) -> tuple:
    """The index of the (B, C, V, T, ...) cells left to generate when the `layout` cells are given."""
    if layout == "grid":
        return (slice(None), slice(None), slice(1, None), slice(1, None))
    return (slice(None), slice(None), slice(1, None))


def save_video_samples(pipeline, mode, dataset, config, path, num_videos: int = 8, prompts=None, given_cells=None):
    """A PNG of samples (video: one row per video, frames left to right; 4d: grids, rows = time, columns =
    views) and a GIF beside it; `prompts` (one per video) for a text-conditioned model; `given_cells`
    ("first_view" or "grid", 4d) gives the data's cells the model was trained to complete from."""
    from ..pipelines.schedulers import make_scheduler
    from ..pipelines.video_export import export_to_video, grid_4d, views_side_by_side
    from ..grids import make_grid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scheduler = pipeline.scheduler
    pipeline.scheduler = make_scheduler(config.sample_scheduler, scheduler)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(config.seed)
    try:
        if mode == "4d":
            items = [dataset[i] for i in range(min(num_videos, 2))]
            cameras = torch.stack([it["cameras"] for it in items])
            timestamps = torch.stack([it["timestamps"] for it in items])
            shape = dataset.sample_shape
            given = {}
            if given_cells is not None:
                video = torch.stack([it["video"] for it in items])
                given["first_view"] = video[:, :, 0]
                if given_cells == "grid":
                    given["first_frame"] = video[:, :, :, 0]
            frames = pipeline(batch_size=len(items), num_views=shape[1], num_frames=shape[2], cameras=cameras,
                              timestamps=timestamps, num_inference_steps=config.sample_num_inference_steps,
                              generator=generator, output_type="np", **given).frames
            grids = [np.asarray(grid_4d(sample)) for sample in frames]
            Image.fromarray(np.concatenate(grids, axis=1)).save(path)
            export_to_video(views_side_by_side(frames[0]), path.with_suffix(".gif"), fps=4, scale=4)
            return path
        from ..pipelines.class_conditional import class_info

        num_classes, _ = class_info(pipeline.transformer.config)
        kwargs = {"class_labels": [i % num_classes for i in range(num_videos)]} if num_classes else {"batch_size": num_videos}
        if prompts is not None:
            kwargs = {"prompt": prompts}
        frames = pipeline(num_frames=dataset.sample_shape[1], num_inference_steps=config.sample_num_inference_steps,
                          guidance_scale=config.sample_guidance_scale, generator=generator, output_type="np",
                          **kwargs).frames  # (N, F, H, W, C)
        make_grid(frames.reshape(-1, *frames.shape[2:]), columns=frames.shape[1]).save(path)
        export_to_video(np.concatenate(list(frames), axis=2), path.with_suffix(".gif"), fps=4, scale=3)
        return path
    finally:
        pipeline.scheduler = scheduler
