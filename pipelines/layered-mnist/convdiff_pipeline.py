"""Lets diffusers load this folder: DiffusionPipeline.from_pretrained(folder, trust_remote_code=True).

The pipeline's code is the installed convdiff package's (pip install convdiff); this file only imports it.
convdiff's own loader, LayeredTextToImagePipeline.from_pretrained(folder), does not run this file.
"""

from convdiff.pipelines.layered import LayeredTextToImagePipeline  # noqa: F401
