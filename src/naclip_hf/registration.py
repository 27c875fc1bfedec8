"""Make NACLIP known to transformers' auto classes and pipelines (`register_naclip`, run once).

Importing this module registers. `import naclip_hf` does not import it (it needs torch and transformers) but has
it imported as soon as transformers is, in whichever order the two are imported: a post-import hook on
`transformers` (`wrapt.register_post_import_hook`, see `naclip_hf.__init__`), which waits while this module or one
of the model package's is half-imported. The public names of `naclip_hf` import it first.

After it, in this process:

- `AutoConfig` / `AutoModel` load NACLIP checkpoints (`model_type: "naclip"`); `AutoImageProcessor` /
  `AutoProcessor` load `NACLIPImageProcessor` / `NACLIPProcessor`;
- `pipeline("naclip-segmentation", model=...)` builds `NACLIPSegmentationPipeline` (with no model, the default
  checkpoint `openai/clip-vit-base-patch16`);
- `save_pretrained` of the config, model, image processor and processor writes `auto_map` and copies the code
  files, so that the folder also loads with `trust_remote_code=True` where naclip-hf is not installed
  (`save_for_hub` adds the pipeline's code and `custom_pipelines`).

`AutoModelForSemanticSegmentation` is deliberately not registered: its contract (pixel values in, logits over a
fixed label set out), which the `image-segmentation` pipeline relies on, does not hold for a model that needs the
class names as text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .models.naclip import pipeline_naclip
from .models.naclip.configuration_naclip import NACLIPConfig
from .models.naclip.image_processing_naclip import NACLIPImageProcessor
from .models.naclip.modeling_naclip import NACLIPForSemanticSegmentation
from .models.naclip.options import DEFAULT_CHECKPOINT
from .models.naclip.pipeline_naclip import TASK
from .models.naclip.processing_naclip import NACLIPProcessor


class DefaultCheckpoint(os.PathLike):
    """The default checkpoint of the pipeline task, as registered.

    `pipeline()` passes a model it was given as text to transformers' own loaders, which retry an unreachable Hub
    for half a minute and then do not say how to get a checkpoint. This stand-in is not text, so `pipeline()`
    hands it over unloaded and `NACLIPSegmentationPipeline` calls its `load`: `naclip_hf.inference.load_model`,
    which checks the checkpoint first (`naclip_hf.checkpoints.resolve_checkpoint`) and fails at once with how to
    download or convert one. It prints (and converts with `os.fspath`) as the id.
    """

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    def load(self, **kwargs: Any) -> NACLIPForSemanticSegmentation:
        """The checkpoint loaded with `naclip_hf.inference.load_model(self.model_id, **kwargs)`."""
        from .inference import load_model

        return load_model(self.model_id, **kwargs)

    def __fspath__(self) -> str:
        return self.model_id

    def __str__(self) -> str:
        return self.model_id

    def __repr__(self) -> str:
        return f"DefaultCheckpoint({self.model_id!r})"


class NACLIPSegmentationPipeline(pipeline_naclip.NACLIPSegmentationPipeline):
    """The `naclip-segmentation` pipeline of the installed package: the model package's pipeline (what Hub folders
    ship) with the label-embedding disk cache on by default, and `save_pretrained` writing Hub folders.

    `text_cache_dir`: a folder, True (default) for `$NACLIP_CACHE` or `~/.cache/naclip_hf/text`, None to keep label
    embeddings in memory only."""

    def __init__(self, *args: Any, text_cache_dir: str | os.PathLike | bool | None = True, **kwargs: Any) -> None:
        from .text_cache import disk_cache

        kwargs.setdefault("text_cache", disk_cache(text_cache_dir))
        super().__init__(*args, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write a folder that `pipeline(model=folder, trust_remote_code=True)` loads without naclip-hf installed
        (see `naclip_hf.hub.save_for_hub`); with `push_to_hub=True` also upload it (`repo_id`, `token`, `private`,
        `commit_message` as for transformers models). `push_to_hub()` uploads this same folder."""
        from .hub import save_for_hub

        kwargs.pop("max_shard_size", None)
        kwargs.pop("safe_serialization", None)
        save_for_hub(self.model, self.processor, save_directory)
        if push_to_hub:
            from transformers.utils.hub import hf_api

            save_directory = os.fspath(save_directory)
            repo_id = kwargs.pop("repo_id", Path(save_directory).name)
            token = kwargs.get("token")
            repo_id = hf_api().create_repo(repo_id, exist_ok=True, token=token, private=kwargs.get("private")).repo_id
            self._upload_modified_files(
                save_directory, repo_id, {}, commit_message=kwargs.get("commit_message"), token=token
            )


_registered = False


def register_naclip() -> None:
    """Register NACLIP with the auto classes, `save_pretrained`'s remote-code support and the pipeline registry.
    Safe to call more than once."""
    global _registered
    if _registered:
        return
    AutoConfig.register(NACLIPConfig.model_type, NACLIPConfig, exist_ok=True)
    AutoModel.register(NACLIPConfig, NACLIPForSemanticSegmentation, exist_ok=True)
    # One class serves both backends: it works on numpy/torch and needs neither PIL nor torchvision transforms.
    AutoImageProcessor.register(
        NACLIPConfig,
        image_processor_classes={"pil": NACLIPImageProcessor, "torchvision": NACLIPImageProcessor},
        exist_ok=True,
    )
    AutoProcessor.register(NACLIPConfig, NACLIPProcessor, exist_ok=True)

    NACLIPConfig.register_for_auto_class("AutoConfig")
    NACLIPForSemanticSegmentation.register_for_auto_class("AutoModel")
    NACLIPImageProcessor.register_for_auto_class("AutoImageProcessor")
    NACLIPProcessor.register_for_auto_class("AutoProcessor")

    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=NACLIPSegmentationPipeline,
        pt_model=NACLIPForSemanticSegmentation,
        default={"model": (DefaultCheckpoint(DEFAULT_CHECKPOINT), None)},
        type="multimodal",
    )
    _registered = True


# Importing this module registers (it imports transformers anyway).
register_naclip()

__all__ = ["DefaultCheckpoint", "NACLIPSegmentationPipeline", "register_naclip"]
