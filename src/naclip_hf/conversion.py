"""Convert CLIP weights in OpenAI's state-dict layout into a transformers checkpoint folder for NACLIP."""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import torch

from .fileio import staged_directory
from .models.naclip.configuration_naclip import NACLIPConfig

# OpenAI name (inside a residual block) -> transformers name (inside an encoder layer).
_BLOCK_RENAMES = {
    f"{openai}.{kind}": f"{transformers}.{kind}"
    for openai, transformers in [("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]
    for kind in ("weight", "bias")
}  # fmt: skip
_TOP_RENAMES = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_REQUIRED = (
    "visual.conv1.weight",
    "visual.proj",
    "visual.positional_embedding",
    "text_projection",
    "token_embedding.weight",
    "positional_embedding",
)


NOT_WEIGHTS_MESSAGE = (
    "{path} is not a CLIP weights file; formats read: OpenAI .pt (TorchScript archive), torch.save state dict "
    "(.pt/.pth/.bin), .safetensors"
)


def load_openai_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an OpenAI-layout CLIP state dict from `.safetensors`, or from a `.pt`/`.pth`/`.bin` file as OpenAI
    publishes them (TorchScript archives) or as `torch.save` writes them. The format is recognised from the
    file's content. Pickled Python code is never executed: plain files are read with `weights_only=True`,
    TorchScript archives by TorchScript's own loader.

    Raises `FileNotFoundError` for a missing file, and `ValueError` for a file that is not one of these formats
    (or is damaged), that holds no tensors, or that is not an OpenAI-layout ViT CLIP.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {path}; pass the path of an OpenAI CLIP .pt or .safetensors file.")
    try:
        if path.suffix == ".safetensors" or _looks_like_safetensors(path):
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif _is_torchscript(path):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            with warnings.catch_warnings():  # e.g. about the pickle protocol of files that are not weights at all
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
    except Exception:  # corrupt, truncated or foreign files raise many different exception types
        # The loaders' own messages are left out on purpose: torch's suggest retrying with weights_only=False,
        # which would run arbitrary pickled code from an unknown file.
        raise ValueError(_not_weights(path)) from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        if not isinstance(state, dict):
            found = f"a {type(state).__name__}"
        else:
            found = "an empty dict" if not state else "a dict whose values are not all tensors"
        raise ValueError(_not_weights(path, f"it holds {found}"))
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(
            f"{path} is not an OpenAI-layout ViT CLIP state dict: missing {missing}. "
            "Transformers CLIP checkpoints need no conversion: load them with from_pretrained."
        )
    return state


def _not_weights(path: Path, detail: str | None = None) -> str:
    reason = f" ({detail})" if detail else ""
    return (
        NOT_WEIGHTS_MESSAGE.format(path=path)
        + f"{reason}. If it is one of these, it is damaged or truncated: download or export it again. A pickled "
        "model object is not read: save its state_dict() instead."
    )


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with the 8-byte little-endian length of a JSON header that follows it."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def config_from_openai_state_dict(state: dict[str, torch.Tensor], **naclip_settings) -> NACLIPConfig:
    """The `NACLIPConfig` describing an OpenAI-layout ViT CLIP state dict (dims read off the tensor shapes)."""
    vision_width, _, patch, _ = state["visual.conv1.weight"].shape
    vision_layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["token_embedding.weight"].shape[1]
    text_layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    return NACLIPConfig(
        projection_dim=int(state["text_projection"].shape[1]),
        logit_scale_init_value=float(state["logit_scale"]) if "logit_scale" in state else 2.6592,
        vision_config={
            "hidden_size": int(vision_width),
            "intermediate_size": int(4 * vision_width),
            "num_hidden_layers": vision_layers,
            "num_attention_heads": int(vision_width // 64),
            "patch_size": int(patch),
            "image_size": int(patch * grid),
            "projection_dim": int(state["text_projection"].shape[1]),
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
        },
        text_config={
            "hidden_size": int(text_width),
            "intermediate_size": int(4 * text_width),
            "num_hidden_layers": text_layers,
            "num_attention_heads": int(text_width // 64),
            "vocab_size": int(state["token_embedding.weight"].shape[0]),
            "max_position_embeddings": int(state["positional_embedding"].shape[0]),
            "projection_dim": int(state["text_projection"].shape[1]),
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        **naclip_settings,
    )


def convert_openai_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and split q/k/v of) an OpenAI-layout state dict into `CLIPModel` parameter names, as fp32."""
    converted: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        tensor = tensor.float()
        if name in _TOP_RENAMES:
            converted[_TOP_RENAMES[name]] = tensor
        elif name == "visual.proj":
            converted["visual_projection.weight"] = tensor.T.contiguous()
        elif name == "text_projection":
            converted["text_projection.weight"] = tensor.T.contiguous()
        elif ".resblocks." in name:
            tower = "vision_model" if name.startswith("visual.") else "text_model"
            prefix, rest = name.split(".resblocks.")
            index, inner = rest.split(".", 1)
            base = f"{tower}.encoder.layers.{index}."
            if inner in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = inner.rsplit("_", 1)[-1]
                for part, chunk in zip(("q", "k", "v"), tensor.chunk(3, dim=0)):
                    converted[f"{base}self_attn.{part}_proj.{kind}"] = chunk.contiguous()
            elif inner in _BLOCK_RENAMES:
                converted[base + _BLOCK_RENAMES[inner]] = tensor
        # Anything else (input_resolution, context_length, vocab_size scalars of TorchScript files) is metadata.
    return converted


def convert_openai_checkpoint(
    source: str | os.PathLike, output_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None
) -> Path:
    """Write a transformers checkpoint folder (config, safetensors weights, tokenizer and processor) for OpenAI
    CLIP weights at `source`.

    `tokenizer_dir` is a folder with `vocab.json` and `merges.txt` (or `tokenizer.json`) of the model's
    tokenizer; without it, OpenAI CLIP's BPE shipped with naclip-hf is written, which fits any text tower with
    OpenAI CLIP's 49,408-token vocabulary (other vocabulary sizes need `tokenizer_dir`). The folder appears
    complete, with the usual permissions of a new folder, or not at all. Returns the output folder.
    """
    from .models.naclip.modeling_naclip import NACLIPForSemanticSegmentation
    from .models.naclip.processing_naclip import NACLIPImageProcessor, NACLIPProcessor
    from .models.naclip.tokenization import has_tokenizer_files, load_clip_tokenizer

    output_dir = Path(output_dir)
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        if not tokenizer_dir.is_dir() or not has_tokenizer_files(tokenizer_dir):
            raise FileNotFoundError(
                f"Tokenizer folder {tokenizer_dir} does not exist or lacks vocab.json and merges.txt (or "
                "tokenizer.json); give the folder of the model's tokenizer, or leave out --tokenizer to write "
                "OpenAI CLIP's BPE."
            )
    with staged_directory(output_dir) as staging:
        state = load_openai_state_dict(source)
        config = config_from_openai_state_dict(state)
        tokenizer = load_clip_tokenizer(tokenizer_dir, config.text_config, fallback=False)
        model = NACLIPForSemanticSegmentation(config)
        missing, unexpected = model.load_state_dict(convert_openai_state_dict(state), strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"Converted weights do not fit CLIP: missing {missing}, unexpected {unexpected}.")
        model.save_pretrained(staging)
        NACLIPProcessor(NACLIPImageProcessor(), tokenizer).save_pretrained(staging)
    return output_dir


__all__ = [
    "NOT_WEIGHTS_MESSAGE",
    "convert_openai_checkpoint",
    "convert_openai_state_dict",
    "load_openai_state_dict",
    "config_from_openai_state_dict",
]
