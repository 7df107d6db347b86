"""Contrastive pretraining of a tiny CLIP text encoder on captioned clips, so that its captions differ.

A randomly initialised tiny CLIP text encoder maps the 40 captions "a digit {zero..nine} moving {left, right, up,
down}" to pooled embeddings whose mean pairwise cosine similarity is about 0.9: a video model conditioned on them can hardly tell the
captions apart. CLIP (Radford et al., ICML 2021, arXiv 2103.00020) learns its text embeddings by matching them
to the images they describe; we do the same on the clips the video model trains on, with a small 3D conv clip
encoder beside the text encoder. The data's captions are the classes, as in CLIP's zero-shot classifier: each
clip's similarities to every caption's pooled embedding (scaled by a learned temperature) are scored by
cross-entropy on its own caption. The trained text encoder is then frozen, as Stable Diffusion and AnimateDiff
freeze their CLIP; the clip encoder is discarded. docs/video.md reports the separation it gives.
"""

import logging
import math

import torch
from torch import nn

from ..pipelines.text_encoders import encode_pooled

logger = logging.getLogger(__name__)


class ClipEncoder(nn.Module):
    """(B, C, F, H, W) clips -> (B, dim) embeddings: 3D convs see the motion, the pooled features the shape."""

    def __init__(self, channels: int, dim: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(channels, width, 3, stride=(1, 2, 2), padding=1), nn.GELU(),
            nn.Conv3d(width, 2 * width, 3, stride=(1, 2, 2), padding=1), nn.GELU(),
            nn.Conv3d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2 * width, dim))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.net(clips)


def caption_separation(tokenizer, text_encoder, captions: list[str]) -> float:
    """Mean cosine similarity of the pooled embeddings of every pair of distinct captions (1: indistinguishable)."""
    with torch.no_grad():
        pooled = nn.functional.normalize(encode_pooled(tokenizer, text_encoder, captions).float(), dim=-1)
    similarity = pooled @ pooled.T
    pairs = len(captions) * (len(captions) - 1)
    return float((similarity.sum() - similarity.diagonal().sum()) / pairs)


def batch_of(dataset, indices, caption_index) -> tuple[torch.Tensor, torch.Tensor]:
    """((B, C, F, H, W) clips, (B,) caption indices) of data-set items (clip, *caption fields)."""
    items = [dataset[int(i)] for i in indices]
    return torch.stack([item[0] for item in items]), torch.tensor([caption_index(*item[1:]) for item in items])


def pretrain_caption_encoder(tokenizer, text_encoder, dataset, caption_index, captions: list[str], steps: int = 800,
                             batch_size: int = 32, learning_rate: float = 2e-3, seed: int = 0,
                             heldout=None) -> dict:
    """Train `text_encoder` in place so that clips of `dataset` retrieve their own caption among `captions`.

    dataset[i] = (clip (C, F, H, W), *fields) and caption_index(*fields) is the index of its caption;
    `heldout`, a data set of the same kind kept out of training, gives the report's retrieval accuracy.
    Deterministic for a seed. Returns {"steps", "loss_start", "loss_end" (mean loss of the first and last tenth
    of the steps), "caption_cosine_before", "caption_cosine_after", "heldout_retrieval"}.
    """
    before = caption_separation(tokenizer, text_encoder, captions)
    generator = torch.Generator().manual_seed(seed)
    channels = dataset[0][0].shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip_encoder = ClipEncoder(channels, text_encoder.config.hidden_size)
    log_temperature = nn.Parameter(torch.tensor(math.log(10.0)))  # CLIP's learned logit scale
    text_encoder.train().requires_grad_(True)
    parameters = [*text_encoder.parameters(), *clip_encoder.parameters(), log_temperature]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt").input_ids
    losses = []
    for step in range(steps):
        indices = torch.randint(0, len(dataset), (batch_size,), generator=generator)
        clips, targets = batch_of(dataset, indices, caption_index)
        text = nn.functional.normalize(text_encoder(tokens).pooler_output, dim=-1)
        video = nn.functional.normalize(clip_encoder(clips), dim=-1)
        logits = log_temperature.exp().clamp(max=100.0) * video @ text.T
        loss = nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            logger.info("caption encoder step %d/%d: loss %.4f", step + 1, steps, losses[-1])
    text_encoder.eval().requires_grad_(False)
    tenth = max(1, steps // 10)
    report = {"steps": steps, "loss_start": sum(losses[:tenth]) / tenth, "loss_end": sum(losses[-tenth:]) / tenth,
              "caption_cosine_before": before,
              "caption_cosine_after": caption_separation(tokenizer, text_encoder, captions)}
    if heldout is not None:
        with torch.no_grad():
            clips, targets = batch_of(heldout, range(len(heldout)), caption_index)
            text = nn.functional.normalize(text_encoder(tokens).pooler_output, dim=-1)
            video = nn.functional.normalize(clip_encoder.eval()(clips), dim=-1)
            report["heldout_retrieval"] = float(((video @ text.T).argmax(-1) == targets).float().mean())
    return report
