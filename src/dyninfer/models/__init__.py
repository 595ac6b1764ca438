"""Model zoo: a registry of backbones (own small-image CNNs, torchvision builders)."""

from . import adapta, bigsmall, cnn, detection, regression, revcol, specialised, tv  # noqa: F401  (registers the builders)
from .exits import EarlyExitNetwork
from .registry import BACKBONES, Normalize, create_model, list_models, register_backbone, spec_from_dict

__all__ = ["BACKBONES", "EarlyExitNetwork", "Normalize", "create_model", "list_models", "register_backbone",
           "spec_from_dict"]
