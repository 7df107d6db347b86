"""Converters from official checkpoints to convdiff models (DiC, DiCo, DiffiT).

    from convdiff.convert import convert_official_checkpoint, convert_official_to_folder
    model = convert_official_checkpoint("DiCo-XL-400K-256x256.pt", "dico-xl")        # EMA weights
    convert_official_to_folder("DiCo-XL-400K-256x256.pt", "converted/dico-xl", model="dico-xl")

CLI: `convdiff convert --checkpoint X.pt --model dico-xl --output DIR` or `python -m convdiff.convert ...`
(apps/convert.py). The names load on first use, so `import convdiff.convert` imports no torch.
"""

from ..lazy import lazy_attributes

_LAZY = {name: ".official" for name in ("KEY_MAPS", "convert_official_checkpoint", "convert_official_to_folder",
                                        "load_official_checkpoint", "official_to_convdiff_state_dict",
                                        "select_state_dict", "strip_prefixes", "suggest_model", "to_official_state_dict")}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
