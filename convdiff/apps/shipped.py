"""The pipeline folders shipped in `pipelines/`: how each one samples by default, how it was trained and what it scores.

`SHIPPED` is the one record of them: the sampling each folder's figures were measured with (saved in its
model_index.json as `sampling_defaults`, so `pipe(class_labels=...)` alone reproduces them; tested), the run that
trained it and its documented figures with the command that measures them (its model card, README.md).
`python -m convdiff.apps.shipped` writes both into the folders again (weights unchanged, checked), e.g. after
the card's text changes.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class ShippedFolder:
    name: str  # the folder under pipelines/
    pipeline: str  # the convdiff.pipelines class that loads it (None: a ControlNet model folder)
    sampler: str | None  # the sample_scheduler name its figures used (convdiff.pipelines.schedulers)
    sampling: dict  # its sampling_defaults
    training: dict
    evaluation: list
    controls: str | None = None  # a ControlNet folder: the pipeline class of the base it steers
    steers_with: str = ""  # a ControlNet folder: what its condition is


SHIPPED = [
    ShippedFolder(
        "dic-mnist", "ClassConditionalPipeline", "euler", {"num_inference_steps": 20, "guidance_scale": 2.0},
        {"recipe": "configs/dic-mnist.yaml (train_config.yaml in this folder)",
         "steps": "3,000 steps of 64 digits (192k images, 48 epochs of the 4,000 training digits), rectified flow, "
                  "lr 2e-3 cosine, EMA 0.999, fp32",
         "wall time": "41 min on one thread of a 2-core machine that was running other jobs", "date": "2026-12-01"},
        ["- FID vs held-out MNIST digits: 24.59 (500 samples, labels i mod 10, seeds 10000+i, the default call, vs "
         "the first 500 held-out digits; 2015 FID Inception; N=500 < 2048 features: biased up, compare only at equal N)",
         "- class accuracy by the independent digit classifier (convdiff/eval/digit_classifier.py): 100.0%",
         "- command: convdiff mnist-demo --pipeline pipelines/dic-mnist"]),
    ShippedFolder(
        "layered-mnist", "LayeredTextToImagePipeline", None, {"num_inference_steps": 25, "guidance_scale": 2.0},
        {"recipe": "configs/layered-mnist.yaml", "steps": "3,000 steps of 32 digits, v-prediction, lr 1e-3 cosine",
         "wall time": "81 min on one thread of a shared, loaded 2-core CPU", "date": "2026-12-01"},
        ["- asked digit at the top scale: 99.0% of 200 samples (20 per digit, the default call; digit CNN of "
         "convdiff/eval/digit_classifier.py); with the prompt emptied: 12% (chance)",
         "- lower scales vs the pooled top scale: 23.96 dB (16 px) and 22.64 dB (8 px) PSNR",
         "- command: convdiff layered-eval --pipeline pipelines/layered-mnist"]),
    ShippedFolder(
        "video-dic-mnist", "VideoPipeline", "euler", {"num_inference_steps": 20, "guidance_scale": 4.0},
        {"recipe": "configs/video-moving-digits.yaml",
         "steps": "2,000 steps of 4 moving-digit clips; pipelines/dic-mnist frozen, temporal attention + frame time "
                  "trained, lr 1e-3, EMA 0.99",
         "wall time": "55 min on one thread of a loaded 2-core Intel Xeon", "date": "2026-12-01",
         "base model": "pipelines/dic-mnist"},
        ["- 40 videos x 8 frames, the default call (guidance 4): 99.1% of frames read as the asked digit, 95.0% of "
         "videos one digit in every frame (real clips: 99.1%, 95.0%); 32-frame clips by overlapping windows: 100% "
         "of frames read as the first frame's digit",
         "- command: convdiff video-demo --config configs/video-moving-digits.yaml --pipeline "
         "pipelines/video-dic-mnist --num-videos 40 (docs/video.md)"]),
    ShippedFolder(
        "text-video-dic-mnist", "VideoPipeline", "euler", {"num_inference_steps": 20, "guidance_scale": 6.0},
        {"recipe": "configs/text-video-moving-digits.yaml (train_config.yaml in this folder)",
         "steps": "a tiny CLIP text encoder pretrained contrastively on the captioned clips (2,000 steps of 32, then "
                  "frozen), then 12,000 steps of 4 directed moving-digit clips with captions; pipelines/dic-mnist "
                  "frozen, temporal attention + text MLP + text modulation of the temporal attention trained, "
                  "lr 1e-3, EMA 0.995",
         "wall time": "72 min for 4,000 steps on one thread of a 2-core AMD EPYC running two other trainings, "
                      "11.5 min for 2,000 more at 2 threads, then 29 and 30 min for 3,000 more each on one thread "
                      "beside one other job, resumed each time", "date": "2026-12-07",
         "base model": "pipelines/dic-mnist"},
        ["- 40 videos (each of the 40 captions once), the default call: asked digit by video majority 97.5%, asked "
         "direction 100%, read as one digit in every frame 92.5% (real clips: 97.5%, 100%, 90%)",
         "- command: convdiff video-demo --config configs/text-video-moving-digits.yaml --pipeline "
         "pipelines/text-video-dic-mnist --num-videos 40 (docs/video.md)"]),
    ShippedFolder(
        "4d-synthetic", "FourDPipeline", "euler", {"num_inference_steps": 25, "guidance_scale": 1.0},
        {"recipe": "configs/4d-synthetic.yaml (train_config.yaml in this folder)",
         "steps": "16,000 steps of 4 synthetic scenes (4 cameras x 4 timestamps, 16x16 RGB), rectified flow, the "
                  "grid's first row (view 0's video) and first column (every view at time 0) given clean in 90% of "
                  "clips, lr 2e-3 cosine over 4,000 steps, then resumed to 8,000 and to 16,000 (each time the cosine "
                  "recomputed over the new total from the resumed step on), EMA 0.995",
         "wall time": "4,132 s for 4,000 steps on one thread of a 2-core AMD EPYC running two other trainings, "
                      "2,345 s for 4,000 more on one thread beside another training, then 5,075 s for the last 8,000 "
                      "on one thread beside another training", "date": "2026-12-07"},
        ["- grid completion on 16 held-out scenes, first row and column given, the 9 other cells generated: one "
         "sample (the default call) 20.08 dB PSNR, posterior mean of 8 one-step predictions 21.57 dB; copying each "
         "cell's view at time 0 18.92 dB, view 0 at the cell's time 14.60 dB; view attention off 16.07 dB; "
         "references that know each scene but the motion along view 0's axis: 23.91 dB held, 22.22 dB redrawn "
         "(a stand-in for one exact posterior sample)",
         "- command: convdiff video-demo --config configs/4d-synthetic.yaml --pipeline pipelines/4d-synthetic "
         "--num-videos 16 (docs/video.md)"]),
]
CONTROLNETS = [ShippedFolder(
    "controlnet-dic-mnist", None, None, {},
    {"recipe": "configs/controlnet-dic-mnist.yaml (train_config.yaml in this folder)",
     "steps": "500 steps of 32 training digits with their Canny edge maps, lr 1e-3, 10% empty conditions, fp32",
     "wall time": "220 s on one thread of a 2-core machine running another job", "date": "2026-12-01",
     "base model": "pipelines/dic-mnist"},
    ["- edge IoU of the samples' Canny edges vs the condition on 300 held-out digits, the default call of "
     "ControlNetPipeline.from_base (the base's Euler 20 steps, guidance 2): 0.787 (0.992 with 1 px slack); "
     "uncontrolled 0.188 (0.685)",
     "- command: convdiff controlnet-demo --controlnet pipelines/controlnet-dic-mnist --num-digits 300"],
    controls="ClassConditionalPipeline", steers_with="the Canny edge map of a digit, (N, 1, 28, 28) in [0, 1]"),
    ShippedFolder(
        "controlnet-video-dic-mnist", None, None, {},
        {"recipe": "configs/controlnet-video-dic-mnist.yaml (train_config.yaml in this folder)",
         "steps": "600 steps of 4 moving-digit clips (8 frames) with one Canny edge map per frame, lr 1e-3, 10% empty "
                  "conditions, fp32; pipelines/video-dic-mnist frozen",
         "wall time": "874 s on one thread of a 2-core AMD EPYC running other jobs", "date": "2026-12-07",
         "base model": "pipelines/video-dic-mnist"},
        ["- per-frame edge IoU of the samples' Canny edges vs the condition on 20 held-out moving-digit clips x 8 "
         "frames, the default call of VideoControlNetPipeline.from_base (the base's Euler 20 steps, guidance 4): "
         "0.725 (0.994 with 1 px slack); uncontrolled 0.136 (0.504)",
         "- command: convdiff controlnet-demo --config configs/controlnet-video-dic-mnist.yaml --controlnet "
         "pipelines/controlnet-video-dic-mnist --num-digits 20"],
        controls="VideoPipeline",
        steers_with="one Canny edge map per frame of a clip, (N, 1, F, 28, 28) in [0, 1]"),
]


def load_shipped(folder: ShippedFolder, root: Path = ROOT):
    from .. import pipelines

    return getattr(pipelines, folder.pipeline).from_pretrained(root / "pipelines" / folder.name)


def controlnet_card(folder: ShippedFolder, controlnet) -> str:
    from ..pipelines.model_card import LICENSE, render_card

    parameters = sum(p.numel() for p in controlnet.parameters()) / 1e6
    base = folder.training["base model"]
    video = folder.controls == "VideoPipeline"
    controlled = "VideoControlNetPipeline" if video else "ControlNetPipeline"
    header = {"library_name": "diffusers", "pipeline_tag": "image-to-video" if video else "image-to-image",
              "license": LICENSE, "tags": ["convdiff", "controlnet", "dic"], "base_model": base}
    base_pipe = load_shipped(next(f for f in SHIPPED if f"pipelines/{f.name}" == base))
    sampling = base_pipe.sampling_arguments()
    defaults = (f"{type(base_pipe.scheduler).__name__}, {sampling['num_inference_steps']} steps, guidance "
                f"{sampling['guidance_scale']}" + (f", shared noise {sampling['shared_noise']}"
                                                  if sampling.get("shared_noise") else ""))
    lines = [f"- a `ControlNet` ({parameters:.2f}M parameters) for `{base}`: it steers the base with "
             f"{folder.steers_with} (a model folder, not a pipeline: put it on the base pipeline)",
             f"- a call with no sampling arguments uses the base pipeline's defaults ({defaults})"]
    output = "frames" if video else "images"
    usage_code = ("from convdiff.models import ControlNet\n"
                  f"from convdiff.pipelines import {folder.controls}, {controlled}\n"
                  f'base = {folder.controls}.from_pretrained("{base}")\n'
                  f'pipe = {controlled}.from_base(base, ControlNet.from_pretrained("pipelines/{folder.name}"))\n'
                  f"{output} = pipe(edge_maps, class_labels=labels).{output}")
    return render_card(header, f"ControlNet for {base}, trained by convdiff", lines, usage_code,
                       {"Training": folder.training}, folder.evaluation)


def reseal(folder: ShippedFolder, root: Path = ROOT) -> Path:
    """Write the folder's sampling defaults and model card again, atomically; the weights must come out unchanged."""
    from ..files import replace_file, replace_folder
    from ..pipelines.schedulers import make_scheduler

    target = root / "pipelines" / folder.name
    if folder.controls is not None:
        from ..models.controlnet import ControlNet

        text = controlnet_card(folder, ControlNet.from_pretrained(target))
        return replace_file(target / "README.md", lambda partial: partial.write_text(text))
    pipe = load_shipped(folder, root)
    before = {name: tensor.clone() for name, tensor in pipe.denoiser.state_dict().items()}
    if folder.sampler:
        pipe.scheduler = make_scheduler(folder.sampler, pipe.scheduler)
    pipe.register_sampling_defaults(folder.sampling)
    kept = [name for name in ("train_config.yaml",) if (target / name).is_file()]
    texts = {name: (target / name).read_text() for name in kept}

    def write(partial):
        pipe.save_pretrained(partial, training=folder.training, evaluation=folder.evaluation)
        for name, text in texts.items():
            (Path(partial) / name).write_text(text)
        for config in Path(partial).rglob("*.json"):  # loading recorded this machine's path: not for a shipped folder
            values = json.loads(config.read_text())
            if isinstance(values, dict) and values.pop("_name_or_path", None) is not None:
                config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")

    replace_folder(target, write)
    after = load_shipped(folder, root).denoiser.state_dict()
    changed = [name for name, tensor in before.items() if not torch.equal(after[name], tensor)]
    if changed:
        raise RuntimeError(f"re-saving {target} changed its weights: {changed[:5]}")
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m convdiff.apps.shipped", description=__doc__)
    parser.add_argument("names", nargs="*", help="folders to re-save (default: all)")
    args = parser.parse_args(argv)
    for folder in [*SHIPPED, *CONTROLNETS]:
        if not args.names or folder.name in args.names:
            print(f"re-saved {reseal(folder)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
