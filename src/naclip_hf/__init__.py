"""naclip-hf: NACLIP (Neighbour-Aware CLIP) training-free open-vocabulary segmentation for transformers."""

from .configuration_naclip import NACLIPConfig
from .modeling_naclip import NACLIPForSemanticSegmentation, NACLIPSemanticSegmenterOutput

__version__ = "0.1.0"

__all__ = ["NACLIPConfig", "NACLIPForSemanticSegmentation", "NACLIPSemanticSegmenterOutput", "__version__"]
