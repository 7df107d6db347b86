"""Text encoders for text-conditional pipelines: a real CLIP folder, or a tiny random CLIP built offline.

Nothing here downloads. `load_text_encoder(path)` reads a local folder in either layout:
- a diffusers pipeline folder (or any folder) with `tokenizer/` and `text_encoder/` subfolders;
- one folder holding both the tokenizer files and the CLIPTextModel (or full CLIPModel) weights.
`tiny_text_encoder()` builds a character-level CLIP tokenizer (no merges: every letter is a token, so any
English prompt encodes) and a small randomly initialised CLIPTextModel, for tests and CPU demos.
"""

from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def character_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet as single-character tokens, each also in its end-of-word form."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [BOS, EOS] + alphabet + [c + "</w>" for c in alphabet]
    return {token: i for i, token in enumerate(tokens)}


def tiny_tokenizer(model_max_length: int = 32) -> CLIPTokenizer:
    """A CLIPTokenizer over `character_vocab()` (514 ids), built in memory."""
    return CLIPTokenizer(vocab=character_vocab(), merges=[], model_max_length=model_max_length)


def tiny_text_encoder(hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2, model_max_length: int = 32,
                      seed: int = 0) -> tuple[CLIPTokenizer, CLIPTextModel]:
    """(tokenizer, randomly initialised CLIPTextModel) from a tiny CLIPTextConfig; the same seed gives the same weights."""
    tokenizer = tiny_tokenizer(model_max_length)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                            num_hidden_layers=num_layers, num_attention_heads=num_heads,
                            max_position_embeddings=model_max_length, projection_dim=hidden_size,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = CLIPTextModel(config)
    return tokenizer, encoder.eval()


def frozen_text_encoder(source: str = "tiny", hidden_size: int = 32, seed: int = 0) -> tuple[CLIPTokenizer, CLIPTextModel]:
    """A training recipe's `task_options.text_encoder`: "tiny" (random tiny CLIP from `seed`) or a local folder;
    frozen, since the recipes train the denoiser only."""
    if source == "tiny":
        tokenizer, encoder = tiny_text_encoder(hidden_size=hidden_size, seed=seed)
    else:
        tokenizer, encoder = load_text_encoder(source)
    encoder.requires_grad_(False)
    return tokenizer, encoder


def load_text_encoder(path) -> tuple[CLIPTokenizer, CLIPTextModel]:
    """Tokenizer and CLIPTextModel from a local folder (see the module docstring for the layouts)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"text encoder folder {path} does not exist; give a local folder with a CLIP tokenizer and "
                         "text model (e.g. a Stable Diffusion pipeline folder), or 'tiny' for a random tiny encoder.")
    tokenizer_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else path
    encoder_dir = path / "text_encoder" if (path / "text_encoder").is_dir() else path
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(encoder_dir, local_files_only=True)
    return tokenizer, encoder.eval()


def run_text_encoder(tokenizer, text_encoder, prompts: list[str], device=None):
    """The text encoder's output for prompts padded to the tokenizer's max length."""
    tokens = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    return text_encoder(tokens.input_ids.to(device or text_encoder.device))


def encode_prompts(tokenizer, text_encoder, prompts: list[str], device=None) -> torch.Tensor:
    """The encoder's last hidden states (N, tokens, hidden), what cross-attention takes."""
    return run_text_encoder(tokenizer, text_encoder, prompts, device)[0]


def encode_pooled(tokenizer, text_encoder, prompts: list[str], device=None) -> torch.Tensor:
    """The encoder's pooled output (N, hidden): CLIP's final-norm state at the end-of-text token, one vector per
    prompt (what a video model conditioned on a global text embedding takes)."""
    return run_text_encoder(tokenizer, text_encoder, prompts, device).pooler_output
