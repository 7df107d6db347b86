"""How the official sample scripts sample each converted family: their scheduler and pipeline defaults.

A converted folder carries these (`official.py` saves them), so `ClassConditionalPipeline.from_pretrained` and
`convdiff sample` reproduce the official evaluation sampler without flags (docs/parity.md, "Sampling"):

- every family: ADM's DDPM sampler with 250 respaced steps 999, 995, ..., 0, the learned-range variance and
  no clipping (`pipelines.schedulers.adm_scheduler`), guidance on the first 3 latent channels only;
- DiC and DiCo: `sample_ddp.py`'s default constant guidance scale 1.5 (DiCo's paper reports DiCo-XL with 1.4:
  pass `--guidance-scale 1.4` for that table);
- DiffiT: its released scripts guide 256px models (latent size <= 32) with the power-cosine schedule up to 4.4
  and 512px ones with a constant 1.49 (Hatamizadeh et al., ECCV 2024, arXiv 2312.02139).
"""

OFFICIAL_STEPS = 250
OFFICIAL_GUIDANCE_CHANNELS = 3
DIFFIT_POWER_COSINE_MAX_SIZE = 32  # latent size up to which DiffiT's sampler ramps the scale (256px)


def official_sampling_defaults(family: str, config) -> dict:
    """The `sampling_defaults` of a ClassConditionalPipeline for a converted `family` model with `config`."""
    defaults = dict(num_inference_steps=OFFICIAL_STEPS, guidance_channels=OFFICIAL_GUIDANCE_CHANNELS)
    if not config.get("num_classes"):
        return {**defaults, "guidance_scale": 1.0, "guidance_schedule": "constant"}
    if family in ("dic", "dico"):
        return {**defaults, "guidance_scale": 1.5, "guidance_schedule": "constant"}
    if family == "diffit":
        size = config.get("sample_size", 32)
        size = max(size) if isinstance(size, (list, tuple)) else size
        if size <= DIFFIT_POWER_COSINE_MAX_SIZE:
            return {**defaults, "guidance_scale": 4.4, "guidance_schedule": "power-cosine"}
        return {**defaults, "guidance_scale": 1.49, "guidance_schedule": "constant"}
    raise ValueError(f"No official sampling defaults are known for family {family!r}; known: dic, dico, diffit.")
