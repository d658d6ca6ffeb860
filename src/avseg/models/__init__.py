"""Models behind one contract (:mod:`avseg.models.base`), built by name from the registry.

Importing this package imports every model file, which registers its presets.
"""

from avseg.hub import from_pretrained
from avseg.models import auralsam2, avsegformer, eemc, sa2va, sam2_vos, sam2love, simtoken, tpavi  # noqa: F401
from avseg.models.base import AVSModel, AVSOutput
from avseg.models.registry import create_model, get_entry, list_models, load_model, model_class, register_model

__all__ = [
    "AVSModel",
    "AVSOutput",
    "create_model",
    "from_pretrained",
    "get_entry",
    "list_models",
    "load_model",
    "model_class",
    "register_model",
]
