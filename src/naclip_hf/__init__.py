"""naclip-hf: NACLIP (Neighbour-Aware CLIP) training-free open-vocabulary segmentation for transformers.

Importing the package registers NACLIP with transformers (see `naclip_hf.registration`): the auto classes, the
`naclip-segmentation` pipeline task, and remote-code saving.
"""

from .configuration_naclip import NACLIPConfig
from .modeling_naclip import NACLIPForSemanticSegmentation, NACLIPSemanticSegmenterOutput
from .pipeline_naclip import NACLIPSegmentationPipeline, save_for_hub
from .processing_naclip import NACLIPImageProcessor, NACLIPProcessor
from .registration import register_naclip

__version__ = "0.1.0"

__all__ = [
    "NACLIPConfig",
    "NACLIPForSemanticSegmentation",
    "NACLIPImageProcessor",
    "NACLIPProcessor",
    "NACLIPSegmentationPipeline",
    "NACLIPSemanticSegmenterOutput",
    "__version__",
    "register_naclip",
    "save_for_hub",
]
