"""Converters from official checkpoints to convdiff models (DiC, DiCo).

    from convdiff.convert import convert_official_checkpoint, convert_official_to_folder
    model = convert_official_checkpoint("DiCo-XL-400K-256x256.pt", "dico-xl")        # EMA weights
    convert_official_to_folder("DiCo-XL-400K-256x256.pt", "converted/dico-xl", model="dico-xl")

CLI: `convdiff convert --checkpoint X.pt --model dico-xl --output DIR` or `python -m convdiff.convert ...`.
"""

from . import diffit  # noqa: F401  (registers the DiffiT family with the converter)
from .official import (
    KEY_MAPS,
    convert_main,
    convert_official_checkpoint,
    convert_official_to_folder,
    load_official_checkpoint,
    official_to_convdiff_state_dict,
    select_state_dict,
    strip_prefixes,
    suggest_model,
    to_official_state_dict,
)

__all__ = [
    "KEY_MAPS",
    "convert_main",
    "convert_official_checkpoint",
    "convert_official_to_folder",
    "load_official_checkpoint",
    "official_to_convdiff_state_dict",
    "select_state_dict",
    "strip_prefixes",
    "suggest_model",
    "to_official_state_dict",
]
