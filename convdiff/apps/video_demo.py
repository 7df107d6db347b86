"""`convdiff video-demo`: train a video or 4D recipe on CPU, sample, export GIF / grids and print metrics.

Video (configs/video-moving-digits.yaml): inflates the shipped `pipelines/dic-mnist` and trains only the
temporal layers on moving digits. It then samples class-balanced videos and reports, next to two references
(the inflated model before training, i.e. the image model run on every frame, and real moving-digit clips):
frame FID against held-out MNIST digits, temporal consistency (cosine similarity of adjacent frames'
Inception features) and the mean absolute change between adjacent frames; with `--i3d FILE` (your I3D
TorchScript, see convdiff/eval/fvd.py) also FVD against another set of held-out real clips.

4D (configs/4d-synthetic.yaml): trains a tiny model on the synthetic multi-view set, samples grids (rows =
time, columns = views), and measures view synthesis on held-out scenes: the first view's whole video is
given, the other views are generated and compared with the ground-truth renders (PSNR), beside the baseline
that copies the first view into every view, the model's posterior mean (the mean of 8 one-step predictions),
the same model with its view layers off (each view made on its own) and two references for any model blind to
view 0 (another scene's views; the mean image).

Everything goes to the recipe's output_dir (metrics.json, GIFs, PNGs); `--assets DIR` copies the pictures.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..training.config import load_config

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "video-moving-digits.yaml"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] video-demo: {message}", file=sys.stderr, flush=True)


def sample_videos(pipeline, num_videos: int, num_frames: int, steps: int, seed: int, batch_size: int = 8,
                  guidance_scale: float = 1.0):
    """(N, F, H, W, C) floats in [0, 1], class-balanced labels, batch b seeded with seed + b."""
    from ..nn.inputs import class_info

    num_classes, _ = class_info(pipeline.transformer.config)
    pipeline.set_progress_bar_config(disable=True)
    out = []
    for start in range(0, num_videos, batch_size):
        count = min(batch_size, num_videos - start)
        kwargs = ({"class_labels": [(start + i) % num_classes for i in range(count)]} if num_classes
                  else {"batch_size": count})
        out.append(pipeline(num_frames=num_frames, num_inference_steps=steps, output_type="np",
                            guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed + start),
                            **kwargs).frames)
    return np.concatenate(out)


def video_metrics(videos, extractor, moving_reference=None) -> dict:
    """Frame FID against 500 held-out MNIST digits (centred, as the image model draws them) and, given
    `moving_reference` Moments, against the frames of held-out moving-digit clips (shifted, as the video data
    has them), and temporal consistency, from one feature extraction."""
    from ..eval.fid import compute_fid
    from ..eval.frechet import Moments
    from ..eval.mnist import heldout_reference
    from ..eval.video_metrics import consistency_of_features, frame_difference, frame_features

    features = frame_features(videos, extractor)
    moments = Moments.from_features(features.reshape(-1, features.shape[-1]).double().numpy())
    reference, save_stats = heldout_reference(500, extractor)  # the same reference as `convdiff mnist-demo`
    fid = compute_fid(moments, reference, extractor=extractor, progress=False, save_stats_b=save_stats,
                      protocol_extra={"frames": f"{videos.shape[0]}x{videos.shape[1]}"})
    consistency = consistency_of_features(features)
    extra = {}
    if moving_reference is not None:
        extra["frame_fid_vs_moving_clips"] = compute_fid(moments, moving_reference, extractor=extractor,
                                                         progress=False, warn_rank_deficient=False).fid
    return {"frame_fid": fid.fid, **extra, "temporal_consistency": consistency["adjacent"],
            "consistency_to_first": consistency["to_first"], "frame_difference": frame_difference(videos),
            "num_videos": int(videos.shape[0]), "num_frames": int(videos.shape[1]), "fid_protocol": fid.protocol}


def real_clips(dataset, count: int) -> np.ndarray:
    """(count, F, H, W, 1) floats in [0, 1] from a MovingDigits set."""
    return np.stack([(dataset[i][0][0].numpy() + 1) / 2 for i in range(count)])[..., None]


def add_fvd(results: dict, samples: dict, reference: np.ndarray, i3d) -> str:
    """FVD of every sample set against the `reference` clips with the user's I3D; returns the protocol."""
    from ..eval.fvd import I3DFeatureExtractor, compute_fvd, video_moments

    extractor = I3DFeatureExtractor(i3d)
    reference = video_moments(reference, extractor)
    for name, videos in samples.items():
        log(f"FVD: {name}")
        result = compute_fvd(videos, reference, extractor=extractor, warn_rank_deficient=False)
        results[name]["fvd"] = result.fvd
    return result.protocol


def evaluate_video(pipeline_dir, config, num_videos: int, steps: int | None, output_dir: Path, scheduler=None,
                   i3d=None, guidance_scale: float | None = None) -> dict:
    """Video metrics of the trained pipeline, sampled with its own steps and guidance unless given; the image
    model it was inflated from is sampled with the same settings, so the two differ only by the model."""
    from ..data.moving_digits import MovingDigits
    from ..eval.inception import InceptionFeatureExtractor
    from ..models.video import inflate
    from ..pipelines.schedulers import make_scheduler
    from ..pipelines.video import VideoPipeline
    from ..pipelines.video_export import export_to_video
    from ..grids import make_grid
    from ..training.video_task import load_base_transformer

    options = config.task_options
    num_frames = int(options.get("num_frames", 8))
    pipe = VideoPipeline.from_pretrained(pipeline_dir)
    if scheduler:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler)
    used = pipe.sampling_arguments(num_inference_steps=steps, guidance_scale=guidance_scale)
    steps, guidance_scale = used["num_inference_steps"], used["guidance_scale"]
    sampler = f"{type(pipe.scheduler).__name__} {steps} steps, guidance {guidance_scale}"
    if pipe.transformer.config.get("text_dim"):
        return evaluate_prompts(pipe, config, num_videos, steps, guidance_scale, output_dir)
    results, samples = {}, {}
    log("sampling the trained model")
    samples["trained"] = sample_videos(pipe, num_videos, num_frames, steps, seed=10_000, guidance_scale=guidance_scale)
    if options.get("base"):  # the same sampler, seeds and labels through the inflated model before training
        log("sampling the untrained inflation (the image model on every frame)")
        untrained = inflate(load_base_transformer(options["base"]), to="video",
                            temporal=options.get("temporal", "attention"), max_frames=pipe.transformer.config.max_frames)
        samples["untrained (image model per frame)"] = sample_videos(VideoPipeline(untrained, pipe.scheduler),
                                                                     num_videos, num_frames, steps, seed=10_000,
                                                                     guidance_scale=guidance_scale)
    real = MovingDigits("heldout", num_frames=num_frames, frame_size=int(options.get("frame_size", 28)),
                        length=num_videos, seed=1)
    samples["real moving digits (held out)"] = real_clips(real, num_videos)
    asked = {name: np.arange(num_videos) % 10 for name in samples}
    asked["real moving digits (held out)"] = np.array([real[i][1] for i in range(num_videos)])
    long_frames = 4 * num_frames  # by overlapping windows (pipelines/video.py), from a model trained on num_frames
    log(f"sampling {long_frames}-frame clips by overlapping windows")
    long_clips = sample_videos(pipe, num_videos, long_frames, steps, seed=20_000, guidance_scale=guidance_scale)

    extractor = InceptionFeatureExtractor()
    from ..eval.frechet import Moments
    from ..eval.video_metrics import digit_scores, frame_features, read_digits

    # other held-out clips (seed 2, also FVD's reference): frames placed like the training data's
    moving = real_clips(MovingDigits("heldout", num_frames=num_frames, frame_size=int(options.get("frame_size", 28)),
                                     length=num_videos, seed=2), num_videos)
    moving_features = frame_features(moving, extractor)
    moving_reference = Moments.from_features(moving_features.reshape(-1, moving_features.shape[-1]).double().numpy())
    for name, videos in samples.items():
        log(f"metrics: {name}")
        results[name] = video_metrics(videos, extractor, moving_reference)
        results[name].update(digit_scores(read_digits(videos), asked[name]))
        tag = name.split(" ")[0]
        make_grid(videos[:10].reshape(-1, *videos.shape[2:]), columns=num_frames).save(output_dir / f"videos-{tag}.png")
        export_to_video(np.concatenate(list(videos[:10]), axis=2), output_dir / f"videos-{tag}.gif", fps=4, scale=3)
    results[f"trained, {long_frames} frames"] = digit_scores(read_digits(long_clips), np.arange(num_videos) % 10)
    make_grid(long_clips[:5].reshape(-1, *long_clips.shape[2:]), columns=long_frames).save(
        output_dir / f"videos-long-{long_frames}.png")
    if i3d:  # FVD reference: the seed-2 clips above, so the real clips' row is FVD's floor at this N
        results["fvd_protocol"] = add_fvd(results, samples, moving, i3d)
    results["protocol"] = (f"{num_videos} videos x {num_frames} frames, {sampler}, labels i mod 10, seeds "
                           f"10000 + batch start ({long_frames}-frame clips: overlapping windows, seeds 20000 + batch "
                           "start); digits read frame by frame by the project's digit CNN; FID reference: 500 held-out MNIST digits; frame_fid_vs_moving_clips: "
                           f"the {num_frames * num_videos} frames of {num_videos} other held-out clips (seed 2)")
    return results


def evaluate_prompts(pipe, config, num_videos: int, steps: int, guidance_scale: float, output_dir: Path) -> dict:
    """A text-conditioned model: does it draw the asked digit moving the asked way (apps/text_video_eval.py)?
    `num_videos` is rounded up to whole sets of the 40 captions."""
    from ..grids import make_grid
    from ..pipelines.video_export import export_to_video
    from .text_video_eval import evaluate_text_video

    log("sampling every caption (trained, text layers off) and reading digits and motion")
    metrics, samples = evaluate_text_video(pipe, config, max(1, -(-num_videos // 40)), steps, guidance_scale)
    num_frames = next(iter(samples.values())).shape[1]
    for name, videos in samples.items():
        tag = name.split(" ")[0]
        # one video per digit, the directions in turn: captions run digit-major (digit d, direction k at 4d + k)
        shown = videos[:: max(1, len(videos) // 40)][[4 * digit + digit % 4 for digit in range(10)]]
        make_grid(shown.reshape(-1, *shown.shape[2:]), columns=num_frames).save(output_dir / f"text-videos-{tag}.png")
        export_to_video(np.concatenate(list(shown), axis=2), output_dir / f"text-videos-{tag}.gif", fps=4, scale=3)
    return metrics


def without_view_layers(model):
    """A copy of a 4D model whose view attention outputs are zero, as at inflation: no information passes
    between views, so each view is generated from its own noise, camera and time only."""
    import copy

    from ..nn.spatiotemporal import ViewAttention

    model = copy.deepcopy(model)
    layers = [m for m in model.modules() if isinstance(m, ViewAttention)]
    if not layers:
        raise ValueError("this 4D model has no ViewAttention layers to switch off (view='attention' only).")
    with torch.no_grad():
        for layer in layers:
            layer.attn.proj.weight.zero_()
            layer.attn.proj.bias.zero_()
    return model


def evaluate_4d(pipeline_dir, config, num_clips: int, steps: int | None, output_dir: Path, scheduler=None) -> dict:
    from ..eval.video_metrics import fourd_view_synthesis
    from ..pipelines.schedulers import make_scheduler
    from ..pipelines.video import FourDPipeline
    from ..pipelines.video_export import export_to_video, grid_4d, views_side_by_side
    from ..training.video_task import VideoTask

    pipe = FourDPipeline.from_pretrained(pipeline_dir)
    if scheduler:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler)
    steps = pipe.sampling_arguments(num_inference_steps=steps)["num_inference_steps"]  # None: the pipeline's own
    sampler = f"{type(pipe.scheduler).__name__} {steps} steps"
    pipe.set_progress_bar_config(disable=True)
    held_out_config = load_config(None, [f"seed={config.seed + 1}", "task=video"])
    held_out_config.task_options = dict(config.task_options, cache=False)
    held_out = VideoTask(held_out_config).build_dataset()  # same sizes, other scenes (another seed)
    if config.task_options.get("given_cells") == "grid":
        return evaluate_grid_completion(pipe, held_out, config, num_clips, steps, sampler, output_dir)
    log("view synthesis on held-out scenes, then the same with the view layers off (each view made on its own)")
    metrics = four_readouts(fourd_view_synthesis, pipe, held_out, num_clips, steps)

    # pictures: three held-out scenes, each truth | a sample | the posterior mean (both given view 0), a free sample
    rows = []
    for i in range(3):
        item = held_out[i]
        video = item["video"][None]
        given = dict(batch_size=1, cameras=item["cameras"][None], timestamps=item["timestamps"][None],
                     first_view=video[:, :, 0], num_views=video.shape[2], num_frames=video.shape[3], output_type="np")
        sample = pipe(**given, num_inference_steps=steps, generator=torch.Generator().manual_seed(i)).frames[0]
        mean = np.mean([pipe(**given, num_inference_steps=1, generator=torch.Generator().manual_seed(100 * i + k)).frames[0]
                        for k in range(8)], axis=0)
        scene = ((video[0].permute(1, 2, 3, 4, 0).numpy() + 1) / 2).clip(0, 1)
        rows.append(beside([np.asarray(grid_4d(x)) for x in (scene, sample, mean)], axis=1))
        if i == 0:
            truth, conditioned = scene, sample
    save_enlarged(beside(rows, axis=0), output_dir / "4d-view-synthesis.png")
    free = pipe(batch_size=1, cameras=item["cameras"][None], timestamps=item["timestamps"][None],
                num_views=video.shape[2], num_frames=video.shape[3], num_inference_steps=steps,
                generator=torch.Generator().manual_seed(1), output_type="np").frames[0]
    save_enlarged(np.asarray(grid_4d(free)), output_dir / "4d-sample.png")
    export_to_video(np.concatenate([views_side_by_side(truth), views_side_by_side(conditioned)], axis=1),
                    output_dir / "4d-view-synthesis.gif", fps=3, scale=4)
    metrics["protocol"] = (f"{num_clips} held-out scenes (seed {config.seed + 1}), view 0's video given "
                           f"(first_view_mode={pipe.config.first_view_mode}), views 1.. generated with {sampler} "
                           "(posterior_mean: the mean of 8 one-step predictions); PSNR on [0, 1] over the generated "
                           "views, averaged per scene")
    return metrics


def beside(images, axis):
    """Images joined along `axis` with a 2-pixel white gap."""
    gap = np.full_like(images[0], 255).take(range(2), axis=axis)
    return np.concatenate([x for image in images for x in (image, gap)][:-1], axis=axis)


def save_enlarged(image: np.ndarray, path: Path, scale: int = 4) -> None:
    from PIL import Image

    Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST).save(path)


def four_readouts(metric, pipe, held_out, num_clips: int, steps: int) -> dict:
    """`metric` (a 4D completion metric of eval.video_metrics) of one sample at `steps` and of the posterior mean,
    for the model and for the same model with its view attention off (no information passes between views)."""
    from ..pipelines.video import FourDPipeline

    no_views = FourDPipeline(**dict(pipe.components, transformer=without_view_layers(pipe.transformer)),
                             first_view_mode=pipe.config.first_view_mode)
    no_views.set_progress_bar_config(disable=True)
    metrics = {}
    for prefix, model in (("", pipe), ("view_layers_off", no_views)):
        sample = metric(model, held_out, num_clips=num_clips, num_inference_steps=steps, seed=0)
        # One step from pure noise returns the model's clean-grid prediction, its estimate of the posterior mean
        # given the known cells (exactly so for flow + Euler); averaged over 8 noise draws: the MSE-best guess.
        mean = metric(model, held_out, num_clips=num_clips, num_inference_steps=1, seed=0, num_samples=8)
        if prefix:
            metrics[prefix], metrics[f"{prefix}_posterior_mean"] = sample, mean
        else:
            metrics.update(sample, posterior_mean=mean)
    return metrics


def evaluate_grid_completion(pipe, held_out, config, num_clips: int, steps: int, sampler: str, output_dir: Path) -> dict:
    """4Real-Video's grid completion on held-out scenes: the first row (view 0's video) and the first column
    (every view at time 0) given, the other cells generated; one sample at the pipeline's own steps, the
    posterior mean (8 one-step predictions averaged), the same with the view attention off, the references of
    `grid_completion_references`, and a picture given | generated | truth of three scenes."""
    from ..eval.video_metrics import fourd_grid_completion, grid_completion_references
    from ..pipelines.video_export import grid_4d

    log("grid completion on held-out scenes (first row and first column given), then with the view layers off")
    metrics = four_readouts(fourd_grid_completion, pipe, held_out, num_clips, steps)
    # what predictors that know each scene except the motion the given cells cannot show would score (the
    # reading of the model's figures in docs/video.md)
    metrics["references"] = grid_completion_references(held_out, num_clips, redraws=64)
    rows = []
    for i in range(3):  # given | generated (the default call) | truth; rows = time, columns = views
        item = held_out[i]
        video = item["video"][None]
        out = pipe(cameras=item["cameras"][None], timestamps=item["timestamps"][None], first_view=video[:, :, 0],
                   first_frame=video[:, :, :, 0], generator=torch.Generator().manual_seed(i), output_type="np").frames[0]
        truth = ((video[0].permute(1, 2, 3, 4, 0).numpy() + 1) / 2).clip(0, 1)
        given = truth.copy()
        given[1:, 1:] = 0.5  # the cells to generate, grey
        rows.append(beside([np.asarray(grid_4d(x)) for x in (given, out, truth)], axis=1))
    save_enlarged(beside(rows, axis=0), output_dir / "4d-grid-completion.png")
    metrics["protocol"] = (f"{num_clips} held-out scenes (seed {config.seed + 1}), view 0's video and every view at "
                           f"time 0 given (first_view_mode={pipe.config.first_view_mode}), the other cells generated "
                           f"with {sampler} (posterior_mean: the mean of 8 one-step predictions); PSNR on [0, 1] over "
                           "each scene's generated cells, averaged over scenes")
    return metrics


def video_demo_main(argv=None):
    parser = argparse.ArgumentParser(prog="convdiff video-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_RECIPE), help="training recipe (default: %(default)s)")
    parser.add_argument("--pipeline", help="skip training and evaluate this saved pipeline folder")
    parser.add_argument("--num-videos", type=int, default=16, help="videos (or 4D scenes) to sample for the metrics")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps for the metrics (default: each pipeline's own)")
    parser.add_argument("--scheduler", default=None,
                        help="sampler (convdiff.pipelines.schedulers name); default: the pipeline's own, the training "
                             "DDPM (learned-range variance for learned sigma), which beats DDIM for the short CPU runs")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance for the video metrics (default: each pipeline's own)")
    parser.add_argument("--assets", help="also copy the GIFs / PNGs into this folder (e.g. docs/video)")
    parser.add_argument("--i3d", metavar="FILE",
                        help="I3D TorchScript (i3d_torchscript.pt, Kinetics-400) for FVD against held-out clips "
                             "(video recipes); a TorchScript runs code: pass only a file you trust")
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    args = parser.parse_args(argv)

    config = load_config(args.config, args.overrides)
    output_dir = Path(config.output_dir)
    if args.i3d and config.task_options.get("mode", "video") == "4d":
        raise ValueError("--i3d (FVD) applies to video recipes; the 4D demo reports view-synthesis PSNR")
    if args.i3d and not Path(args.i3d).is_file():  # before training, not after it
        raise FileNotFoundError(f"I3D weights file not found: {args.i3d}")
    if args.pipeline:
        pipeline_dir = Path(args.pipeline)
    else:
        from ..training.loop import train

        pipeline_dir = train(config)
    output_dir.mkdir(parents=True, exist_ok=True)
    mode = config.task_options.get("mode", "video")
    evaluate = evaluate_4d if mode == "4d" else evaluate_video
    fvd = {"i3d": args.i3d} if args.i3d else {}
    if mode != "4d":
        fvd["guidance_scale"] = args.guidance_scale
    metrics = evaluate(pipeline_dir, config, args.num_videos, args.steps, output_dir, args.scheduler, **fvd)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    if args.assets:
        assets = Path(args.assets)
        assets.mkdir(parents=True, exist_ok=True)
        for path in sorted(output_dir.glob("*.gif")) + sorted(output_dir.glob("*.png")):
            shutil.copy(path, assets / path.name)
    return 0
