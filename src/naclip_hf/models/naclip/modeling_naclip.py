"""NACLIP: CLIP with a neighbour-aware last vision layer, for training-free open-vocabulary segmentation.

Everything but the last vision encoder layer is transformers' CLIP, under the same parameter names as
`CLIPModel`, so any CLIP checkpoint loads with no missing or unexpected keys. The vision tower runs through
`CLIPVisionModel.forward`; NACLIP replaces four pieces:

- `NACLIPVisionEmbeddings`: the positional embeddings resized as the official code resizes them;
- `NACLIPVisionEncoder`: CLIP's encoder loop, handing the last block's per-call settings to the last layer only;
- `NACLIPAttention`: the last layer's attention weights, chosen from `NACLIPAttentionInterface`;
- `NACLIPEncoderLayer`: the last layer run as the `reduced` block (attention output only) or the usual one.

With `arch` naming a dense method (`dense_methods.DENSE_METHODS`: SC-CLIP, SFP, ...), the last layer is not run
as a block: the layers before it run through `CLIPVisionModel.forward`, which captures their hidden states (and the
attention weights the method reads, from eager attention in those layers), and the method makes the final patch
tokens from them.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModel, CLIPVisionModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
    CLIPEncoder,
    CLIPEncoderLayer,
    CLIPPreTrainedModel,
    CLIPVisionEmbeddings,
    eager_attention_forward,
)
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput
from transformers.utils.generic import GeneralInterface, can_return_tuple

from .configuration_naclip import NACLIPConfig
from .dense_methods import DENSE_METHODS, attention_layers, check_arch, is_dense_method
from .image_utils import (  # torch-free: shared with the ONNX runtime
    sliding_windows,
    window_batches,
    window_coverage,
    window_tokens,
)
from .options import (
    CALL_OPTIONS,
    NACLIPInferenceOptions,
    names_of_stage,
    resolve_options,
    settings_typed_dict,
    window_batch_size,
)
from .templates import IMAGENET_TEMPLATES

# Keywords of `forward` for one call (built from `options.SETTINGS`): the last block and the sliding windows, and
# the post-processing and image size, which the output carries on to `post_process_semantic_segmentation`.
NACLIPForwardKwargs = settings_typed_dict("NACLIPForwardKwargs", "block", "windows", "post", "image")
# The last block's settings, which the encoder hands to the last layer only (with the patch grid).
LAST_BLOCK_SETTINGS = names_of_stage("block")


@dataclass
class NACLIPSemanticSegmenterOutput(ModelOutput):
    """
    Output of [`NACLIPForSemanticSegmentation`].

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_names, height, width)`):
            Cosine similarity between every pixel's feature and every class name's text embedding, at the
            resolution of `pixel_values` (patch logits upsampled bilinearly; windows averaged where they overlap).
        text_embeds (`torch.FloatTensor` of shape `(num_names, projection_dim)`):
            The L2-normalised class-name embeddings used.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The vision tower's hidden states as `CLIPVisionModel` returns them (the embeddings, then every layer's
            output), each `(batch_size * num_windows, 1 + grid_height * grid_width, hidden_size)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Attention maps of the vision layers, `(batch_size * num_windows, num_heads, tokens, tokens)` each, as
            `CLIPVisionModel` records them (with SDPA, transformers records none for CLIP's own layers).
            `attentions[-1]` is always NACLIP's last layer; for `csa` it is the sum of its two softmaxes (rows sum
            to 2). Tokens are the CLS token, then the patches row by row. With a dense method (`arch="scclip"`,
            ...) the last layer is not run as a block: the hidden states end with the layer before it, and the
            attentions are those of the layers before it that ran eager attention (all with eager attention; with
            SDPA only those the method reads).

        options (`NACLIPInferenceOptions`):
            The options this call ran with (the config's, the call's method and keywords on top): post-processing
            takes its defaults from them, so `processor.post_process_semantic_segmentation(outputs, inputs)` refines
            as the method asks.

    With sliding windows, the windows of image 0 come first (in `sliding_windows` order), then those of image 1.
    """

    logits: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    options: NACLIPInferenceOptions | None = None


# ------------------------------------------------------------------------------------- neighbourhood bias Ω
def gaussian_neighbourhood_bias(grid_height: int, grid_width: int, std: float) -> torch.Tensor:
    """Ω for a patch grid, with a leading zero row and column for the CLS token.

    Ω[i, j] = exp(-‖pos_i - pos_j‖² / (2 std²)) between the (row, column) positions of patches i and j.
    Returns [1 + grid_height * grid_width, 1 + grid_height * grid_width] (float32).
    """
    # Broadcast and flatten rather than repeat: with symbolic grid sizes (ONNX export) this stays shape-dependent.
    shape = (grid_height, grid_width)
    rows = torch.arange(grid_height, dtype=torch.float64)[:, None].expand(shape).reshape(-1)
    cols = torch.arange(grid_width, dtype=torch.float64)[None, :].expand(shape).reshape(-1)
    dist2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    omega = torch.exp(-dist2 / (2.0 * std * std)).float()
    return F.pad(omega, (1, 0, 1, 0))


# ------------------------------------------------------------------------------------ attention strategies
def attend(
    module: nn.Module,
    left: torch.Tensor,
    right: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor | None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(s · left rightᵀ + bias) · value through transformers' attention interface.

    `left`, `right`, `value` are [B, heads, T, head_dim]; `bias` broadcasts to [B, heads, T, T]. Returns the output
    [B, T, heads, head_dim] and, when `output_attentions` (computed eagerly then), the weights [B, heads, T, T].
    """
    implementation = module.config._attn_implementation
    if output_attentions or implementation in (None, "eager"):
        interface = eager_attention_forward
    else:
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    mask = None if bias is None else bias.to(left.dtype)
    return interface(module, left, right, value, mask, scaling=module.scale, dropout=0.0)


def vanilla_attention(module, query, key, value, *, patch_grid, gaussian_std, output_attentions=False):
    """CLIP's own attention: softmax(s·q·kᵀ)."""
    return attend(module, query, key, value, None, output_attentions)


def kk_attention(module, query, key, value, *, patch_grid, gaussian_std, output_attentions=False):
    """Key-key attention: softmax(s·k·kᵀ)."""
    return attend(module, key, key, value, None, output_attentions)


def naclip_attention(module, query, key, value, *, patch_grid, gaussian_std, output_attentions=False):
    """NACLIP: softmax(s·k·kᵀ + Ω), key-key similarity plus the Gaussian neighbourhood bias."""
    bias = module.neighbourhood_bias(patch_grid, gaussian_std, key)
    return attend(module, key, key, value, bias, output_attentions)


def gav_attention(module, query, key, value, *, patch_grid, gaussian_std, output_attentions=False):
    """Gaussian added to vanilla (the paper's GAV ablation): softmax(s·q·kᵀ + Ω)."""
    bias = module.neighbourhood_bias(patch_grid, gaussian_std, key)
    return attend(module, query, key, value, bias, output_attentions)


def nonly_attention(module, query, key, value, *, patch_grid, gaussian_std, output_attentions=False):
    """Neighbourhood only: softmax(c·Ω), with c = s · mean over heads of (mean_i ‖q_i‖ · mean_j ‖k_j‖), per image.

    Runs as attention with zero queries (so s·q·kᵀ = 0) and c·Ω as the additive bias.
    """
    mean_q = query.norm(dim=-1).mean(dim=-1)  # [B, heads]
    mean_k = key.norm(dim=-1).mean(dim=-1)
    coefficient = module.scale * (mean_q * mean_k).mean(dim=-1)  # [B]
    omega = module.neighbourhood_bias(patch_grid, gaussian_std, coefficient.float())
    bias = coefficient.float().view(-1, 1, 1, 1) * omega
    return attend(module, torch.zeros_like(query), key, value, bias, output_attentions)


def csa_attention(module, query, key, value, *, patch_grid, gaussian_std, output_attentions=False):
    """SCLIP's correlative self-attention: softmax(s·q·qᵀ) + softmax(s·k·kᵀ), added, not renormalised."""
    from_queries, weights_q = attend(module, query, query, value, None, output_attentions)
    from_keys, weights_k = attend(module, key, key, value, None, output_attentions)
    weights = weights_q + weights_k if output_attentions else None
    return from_queries + from_keys, weights


def qq_attention(module, query, key, value, *, patch_grid, gaussian_std, output_attentions=False):
    """ClearCLIP's self-self attention: softmax(s·q·qᵀ)."""
    return attend(module, query, query, value, None, output_attentions)


def identity_attention(module, query, key, value, *, patch_grid, gaussian_std, output_attentions=False):
    """MaskCLIP: every token attends only to itself, so the output is its value (weights: the identity)."""
    weights = None
    if output_attentions:
        tokens = value.shape[-2]
        weights = torch.eye(tokens, dtype=value.dtype, device=value.device).expand(*value.shape[:2], tokens, tokens)
    return value.transpose(1, 2), weights


class NACLIPAttentionInterface(GeneralInterface):
    """The attention strategies of the last layer, by name, in the style of transformers' `AttentionInterface`:
    `NACLIPAttentionInterface.register(name, function)` adds one for every model; an instance's own entries
    (`interface[name] = function`) override the class-wide ones for that instance only.

    A strategy takes `(module, query, key, value, *, patch_grid, gaussian_std, output_attentions=False)` with
    query/key/value [B, heads, T, head_dim] and the patch grid (rows, columns), and returns (output [B, T, heads,
    head_dim], weights [B, heads, T, T] or None).
    """

    _global_mapping = {
        "naclip": naclip_attention,
        "gav": gav_attention,
        "kk": kk_attention,
        "nonly": nonly_attention,
        "csa": csa_attention,
        "vanilla": vanilla_attention,
        "qq": qq_attention,
        "identity": identity_attention,
    }


# The registry NACLIP's attention layers read.
NACLIP_ATTENTION_FUNCTIONS = NACLIPAttentionInterface()


def register_attention(name: str, function: Callable) -> None:
    """Make `function` available as `attn_strategy=name` (see `NACLIPAttentionInterface` for its signature)."""
    NACLIPAttentionInterface.register(name, function)


def check_attention_strategy(name: str) -> None:
    """Raise `ValueError` unless `name` is a registered attention strategy."""
    if name not in NACLIP_ATTENTION_FUNCTIONS:
        raise ValueError(
            f"attn_strategy={name!r} is invalid: it must be one of {', '.join(NACLIP_ATTENTION_FUNCTIONS)} "
            "(register a new one with naclip_hf.models.naclip.modeling_naclip.register_attention)."
        )


# ------------------------------------------------------------------------------------------ vision pieces
class NACLIPVisionEmbeddings(CLIPVisionEmbeddings):
    """CLIP's vision embeddings whose positional embeddings are resized as `config.pos_embed_interpolation` says.

    `"official"` resizes with the official code's bicubic scale factor `(grid + 0.1) / pretrained_grid` (not a
    target size: the two differ by about 1e-3 in the logits); `"transformers"` uses CLIP's own
    `interpolate_pos_encoding`. The resized table is cached per grid until the weights change.
    """

    def __init__(self, config, naclip_config: NACLIPConfig) -> None:
        super().__init__(config)
        self.naclip_config = naclip_config  # read only: the mode may be changed on the config after loading
        self._cache: dict[tuple, torch.Tensor] = {}
        self._cache_lock = threading.Lock()

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Positional embeddings [1, 1 + grid_height * grid_width, hidden] for an input of `height` × `width`."""
        mode = self.naclip_config.pos_embed_interpolation
        if mode == "transformers":
            return super().interpolate_pos_encoding(embeddings, height, width)
        table = self.position_embedding.weight
        grid = (height // self.patch_size, width // self.patch_size)
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        # Inference tensors (weights created under torch.inference_mode) have no version counter and never change.
        version = -1 if table.is_inference() else table._version
        key = (grid, table.device, table.dtype, table.data_ptr(), version)
        if not tracing:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
        resized = official_position_embeddings(table, grid)[None]
        if not tracing and not torch.is_grad_enabled():
            with self._cache_lock:
                if len(self._cache) >= 8:
                    self._cache.clear()
                self._cache[key] = resized
        return resized


def official_position_embeddings(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`table` [1 + n², hidden] resized to `grid` as the official code does: [1 + rows * columns, hidden]."""
    pretrained = int(math.isqrt(table.shape[0] - 1))
    if tuple(grid) == (pretrained, pretrained):
        return table
    patch_pos = table[1:].reshape(1, pretrained, pretrained, -1).permute(0, 3, 1, 2)
    # Scale factors with +0.1 (DINO's guard against float error), not a target size: the two differ.
    patch_pos = F.interpolate(
        patch_pos.float(),
        scale_factor=((grid[0] + 0.1) / pretrained, (grid[1] + 0.1) / pretrained),
        mode="bicubic",
        align_corners=False,
        recompute_scale_factor=False,
    )
    patch_pos = patch_pos.to(table.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([table[:1], patch_pos], dim=0)


class NACLIPAttention(CLIPAttention):
    """`CLIPAttention` (same parameters) whose weights come from `NACLIP_ATTENTION_FUNCTIONS[attn_strategy]`."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self._bias_cache: dict[tuple, torch.Tensor] = {}
        self._bias_lock = threading.Lock()

    def neighbourhood_bias(self, grid: tuple[int, int], std: float, like: torch.Tensor) -> torch.Tensor:
        """Ω for `grid` (rows, columns) on the device and in the dtype of `like`, computed once per grid and σ."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return gaussian_neighbourhood_bias(grid[0], grid[1], std).to(like.device, like.dtype)
        key = (int(grid[0]), int(grid[1]), float(std), str(like.device))
        bias = self._bias_cache.get(key)
        if bias is None:
            bias = gaussian_neighbourhood_bias(key[0], key[1], key[2]).to(like.device)
            with self._bias_lock:  # shared by every caller: never modified in place
                if len(self._bias_cache) >= 16:
                    self._bias_cache.clear()
                self._bias_cache[key] = bias
        return bias.to(like.dtype)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        attn_strategy: str,
        gaussian_std: float,
        patch_grid: tuple[int, int],
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states [B, T, D] -> (output [B, T, D], weights [B, heads, T, T] with `output_attentions`).

        `attn_strategy`, `gaussian_std` and `patch_grid` (patch rows, columns) are this call's; the other
        keywords of transformers' attention interface are not used by the strategies.
        """
        function = NACLIP_ATTENTION_FUNCTIONS[attn_strategy]
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        output, weights = function(
            self, query, key, value, patch_grid=patch_grid, gaussian_std=gaussian_std,
            output_attentions=bool(output_attentions),
        )  # fmt: skip
        output = output.reshape(*hidden_states.shape[:-1], -1).contiguous()
        return self.out_proj(output), weights


class CLIPAttentionWithWeights(CLIPAttention):
    """CLIP's attention (same parameters, same computation) for the layers before the last. A call with
    `eager_attention=True` runs transformers' eager attention whatever `config._attn_implementation` says, so that
    it returns its weights (which `output_attentions` then records): the dense methods read some layers' weights
    without making every layer eager. Other calls are `CLIPAttention.forward` itself."""

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, eager_attention: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states [B, T, D] -> (output [B, T, D], weights [B, heads, T, T] or None)."""
        if not eager_attention:
            return super().forward(hidden_states, attention_mask, **kwargs)
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        output, weights = eager_attention_forward(
            self, query, key, value, attention_mask, scaling=self.scale, dropout=dropout
        )  # fmt: skip
        output = output.reshape(*hidden_states.shape[:-1], -1).contiguous()
        return self.out_proj(output), weights


class NACLIPEncoderLayer(CLIPEncoderLayer):
    """The last CLIP vision encoder layer, run as NACLIP's `reduced` block or the usual `vanilla` one."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.self_attn = NACLIPAttention(config)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *, arch: str, **kwargs
    ) -> torch.Tensor:
        """hidden_states [B, T, D] -> [B, T, D]. `reduced`: out_proj(attention(layer_norm1(x))) only; the other
        keywords go to `NACLIPAttention`."""
        attended, _ = self.self_attn(self.layer_norm1(hidden_states), **kwargs)
        if arch == "reduced":
            return attended
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class NACLIPVisionEncoder(CLIPEncoder):
    """CLIP's vision encoder with `NACLIPEncoderLayer` last. The last block's settings of a call (`arch`,
    `attn_strategy`, `gaussian_std`, `patch_grid`) go to that layer only; CLIP's layers get transformers' own
    keywords."""

    def __init__(self, config) -> None:
        super().__init__(config)
        for layer in self.layers[:-1]:
            layer.self_attn = CLIPAttentionWithWeights(config)
        self.layers[-1] = NACLIPEncoderLayer(config)

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutput:
        """inputs_embeds [B, T, D] -> `last_hidden_state` [B, T, D], the last block's output.

        With `arch` naming a dense method the last layer is not run: `last_hidden_state` is then the output of the
        layer before it, and the layers listed in `eager_attention_layers` run eager attention (their weights are
        recorded with `output_attentions`)."""
        last_block = {name: kwargs.pop(name) for name in (*LAST_BLOCK_SETTINGS, "patch_grid")}
        eager_layers = kwargs.pop("eager_attention_layers", ())
        clip_kwargs = dict(kwargs)
        if self.config._attn_implementation not in (None, "eager"):
            # Those kernels return no weights (and say so); NACLIP's last layer computes its own.
            clip_kwargs.pop("output_attentions", None)
        hidden_states = inputs_embeds
        for index, layer in enumerate(self.layers[:-1]):
            if index in eager_layers:
                hidden_states = layer(hidden_states, attention_mask, eager_attention=True, **clip_kwargs)
            else:
                hidden_states = layer(hidden_states, attention_mask, **clip_kwargs)
        if is_dense_method(last_block["arch"]):
            return BaseModelOutput(last_hidden_state=hidden_states)
        hidden_states = self.layers[-1](hidden_states, attention_mask, **last_block, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


# ------------------------------------------------------------------------------------------------ models
class NACLIPPreTrainedModel(CLIPPreTrainedModel):
    """Base class of NACLIP models: CLIP's weight initialisation and loading, with NACLIP's config.

    Flash attention is not supported: NACLIP's attention adds a float bias (Ω) to the scores, which flash kernels do
    not take. Eager and SDPA run the same attention functions.
    """

    config_class = NACLIPConfig
    config: NACLIPConfig
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False


class NACLIPForSemanticSegmentation(NACLIPPreTrainedModel):
    """CLIP with NACLIP's last vision layer: per-pixel open-vocabulary segmentation with no training.

    `forward` returns per-name logits at the processed resolution;
    `NACLIPImageProcessor.post_process_semantic_segmentation` turns them into class probabilities and a label map
    at the original image size (PAMR, temperature softmax, synonyms merged, `prob_thd`).

    Example:

    ```python
    >>> import torch
    >>> from naclip_hf import NACLIPForSemanticSegmentation, NACLIPProcessor
    >>> model = NACLIPForSemanticSegmentation.from_pretrained("openai/clip-vit-base-patch16")
    >>> processor = NACLIPProcessor.from_pretrained("openai/clip-vit-base-patch16")
    >>> inputs = processor(images=image, text=["sky", "tree", "road, street"])
    >>> with torch.no_grad():
    ...     outputs = model(**inputs)
    >>> labels = processor.post_process_semantic_segmentation(outputs, inputs)[0]  # [H, W] class ids
    ```
    """

    main_input_name = "pixel_values"
    input_modalities = ("image", "text")

    def __init__(self, config: NACLIPConfig) -> None:
        super().__init__(config)
        text_config, vision_config = config.text_config, config.vision_config
        self.text_model = CLIPTextModel._from_config(text_config)
        self.vision_model = CLIPVisionModel._from_config(vision_config)
        self.visual_projection = nn.Linear(vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.vision_model.embeddings = NACLIPVisionEmbeddings(vision_config, config)
        self.vision_model.encoder = NACLIPVisionEncoder(vision_config)
        settings = config.check_naclip_settings()
        check_attention_strategy(settings["attn_strategy"])
        check_arch(settings["arch"])
        self.post_init()

    # ----------------------------------------------------------------------------------------------- text
    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [N, L] -> projected EOS features [N, projection_dim] (not normalised)."""
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.text_projection(pooled)

    @torch.no_grad()
    def get_name_embeddings(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        num_templates: int,
        text_batch_size: int | None = None,
        shared_prefix: bool = True,
    ) -> torch.Tensor:
        """Embed class names from their prompts.

        Args:
            input_ids: [num_names * num_templates, L], the prompts of name 0 first, then name 1, ...
            attention_mask: [num_names * num_templates, L] or None.
            num_templates: prompts per name.
            text_batch_size: prompts per text-tower call (default: the config's).
            shared_prefix: run the tokens that all prompts of one template share (those before the name) once per
                template instead of once per prompt. Exact (the text tower is causal); `False` runs every prompt
                whole. Inputs whose padding precedes a pooled token fall back to whole prompts.
        Returns:
            [num_names, projection_dim]: per name, the mean of its L2-normalised prompt embeddings, normalised.

        Example:

        ```python
        >>> text = processor.tokenize_class_names(["sky", "tree", "road, street"])
        >>> model.get_name_embeddings(text["input_ids"], text["attention_mask"], text["num_templates"]).shape
        torch.Size([4, 512])
        ```
        """
        if num_templates < 1 or input_ids.shape[0] % num_templates:
            raise ValueError(
                f"{input_ids.shape[0]} prompts cannot be split into groups of {num_templates} templates."
            )
        batch_size = self.config.text_batch_size if text_batch_size is None else int(text_batch_size)
        if batch_size < 1:
            raise ValueError(f"text_batch_size={text_batch_size!r} is invalid: it must be an integer >= 1.")
        features = None
        if shared_prefix:
            features = self._prompt_features_shared_prefix(input_ids, attention_mask, num_templates, batch_size)
        if features is None:
            features = self._prompt_features(input_ids, attention_mask, batch_size)
        per_prompt = features.view(-1, num_templates, features.shape[-1])
        # Averaged in float32: a bfloat16 mean of 80 prompts loses the small differences between class names.
        return F.normalize(per_prompt.float().mean(dim=1), dim=-1).to(features.dtype)

    def _prompt_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, batch_size: int
    ) -> torch.Tensor:
        """Every prompt through the whole text tower: [N, L] -> L2-normalised features [N, projection_dim]."""
        num_prompts = input_ids.shape[0]
        lengths = order = None
        if attention_mask is not None:
            # Prompts run in order of length, so that a batch holds prompts of (nearly) one length and is cut to
            # its longest prompt: little padding goes through the tower, and the causal mask makes it exact.
            lengths = attention_mask.sum(dim=1)
            order = torch.argsort(lengths, stable=True)
        features = None
        for start in range(0, num_prompts, batch_size):
            rows = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            ids = input_ids[rows]
            mask = None
            if attention_mask is not None:
                length = int(lengths[rows].max())
                ids, mask = ids[:, :length], attention_mask[rows, :length]
            batch_features = F.normalize(self.get_text_features(ids, mask), dim=-1)
            if features is None:
                features = batch_features.new_empty((num_prompts, batch_features.shape[-1]))
            features[rows] = batch_features
        return features

    def _pooled_token_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[N, L] -> [N]: the position whose final hidden state `CLIPTextModel` pools (its rule: the first
        `eos_token_id`, or the largest id for checkpoints whose config says `eos_token_id=2`)."""
        ids = input_ids.to(torch.int)
        if self.text_model.eos_token_id == 2:
            return ids.argmax(dim=-1)
        return (ids == self.text_model.eos_token_id).int().argmax(dim=-1)

    def _text_layer(
        self,
        layer: nn.Module,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        query_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One `CLIPEncoderLayer` of the text tower on new tokens that may attend to earlier tokens' keys/values.

        Args:
            hidden: [B, S, D], the new tokens.
            mask: additive float mask [B, 1, queries, past + S].
            past: keys and values [B, heads, P, head_dim] of earlier tokens, or None.
            query_positions: [B] to compute the layer's output at one token per row only (the last layer).
        Returns:
            (output [B, S or 1, D], keys, values [B, heads, S, head_dim] of the new tokens).
        """
        attention = layer.self_attn
        normed = layer.layer_norm1(hidden)
        shape = (*hidden.shape[:-1], -1, attention.head_dim)
        key = attention.k_proj(normed).view(shape).transpose(1, 2)
        value = attention.v_proj(normed).view(shape).transpose(1, 2)
        residual = hidden
        if query_positions is not None:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            normed = normed[rows, query_positions][:, None]
            residual = hidden[rows, query_positions][:, None]
        query = attention.q_proj(normed).view(*normed.shape[:-1], -1, attention.head_dim).transpose(1, 2)
        all_keys, all_values = key, value
        if past is not None:
            all_keys, all_values = torch.cat([past[0], key], dim=2), torch.cat([past[1], value], dim=2)
        implementation = attention.config._attn_implementation
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, _ = interface(attention, query, all_keys, all_values, mask, scaling=attention.scale, dropout=0.0)
        hidden = residual + attention.out_proj(output.reshape(*normed.shape[:-1], -1).contiguous())
        return hidden + layer.mlp(layer.layer_norm2(hidden)), key, value

    def _prompt_features_shared_prefix(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        num_templates: int,
        batch_size: int,
    ) -> torch.Tensor | None:
        """Like `_prompt_features`, with each template's shared prefix run once.

        The prompts of one template (rows t, t + T, t + 2T, ...) start with the same tokens (start of text and the
        template's words before the name). The text tower is causal, so the hidden states of those tokens are the
        same in every prompt of the template: they run once per template, keeping every layer's keys and values,
        and each prompt runs only its remaining tokens, attending to the prefix's keys and values and causally to
        its own. Only the pooled token's state is needed, so tokens after it are ignored and the last layer runs
        at that token only. Returns None when padding precedes a pooled token (the mask would then matter).
        """
        text = self.text_model
        num_prompts, length = input_ids.shape
        device = input_ids.device
        pooled = self._pooled_token_positions(input_ids)
        if attention_mask is not None:
            before_pooled = torch.arange(length, device=device)[None] <= pooled[:, None]
            if not bool((attention_mask.bool() | ~before_pooled).all()):
                return None
        by_template = input_ids.view(-1, num_templates, length)
        same = (by_template == by_template[:1]).all(dim=0)  # [T, L]: column equal in all prompts of the template
        prefix_lengths = same.int().cumprod(dim=1).sum(dim=1)
        # The pooled token itself always runs with the prompt.
        prefix_lengths = torch.minimum(prefix_lengths, pooled.view(-1, num_templates).amin(dim=0))
        longest_prefix = int(prefix_lengths.max())
        dtype = text.embeddings.token_embedding.weight.dtype
        blocked = torch.finfo(dtype).min
        layers = text.encoder.layers
        positions = torch.arange(length, device=device)

        prefix_cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        if longest_prefix > 0:
            ids = by_template[0, :, :longest_prefix]
            hidden = text.embeddings(input_ids=ids)
            causal = positions[:longest_prefix, None] >= positions[None, :longest_prefix]
            mask = torch.zeros(causal.shape, dtype=dtype, device=device).masked_fill_(~causal, blocked)[None, None]
            for layer in layers:
                hidden, key, value = self._text_layer(layer, hidden, mask)
                prefix_cache.append((key, value))

        template = torch.arange(num_prompts, device=device) % num_templates
        starts = prefix_lengths[template]  # [N]: first position each prompt runs itself
        suffix_lengths = pooled + 1 - starts
        order = torch.argsort(suffix_lengths, stable=True)
        features = None
        for first in range(0, num_prompts, batch_size):
            rows = order[first : first + batch_size]
            span = int(suffix_lengths[rows].max())
            # Positions past a prompt's pooled token may hold any token: causally, the pooled state ignores them.
            token_positions = (starts[rows, None] + positions[None, :span]).clamp_(max=length - 1)
            ids = input_ids[rows[:, None], token_positions]
            hidden = text.embeddings(input_ids=ids, position_ids=token_positions)
            own = positions[:span, None] >= positions[None, :span]  # [S, S] causal
            allowed = own.expand(len(rows), span, span)
            if longest_prefix > 0:
                visible_prefix = positions[None, :longest_prefix] < starts[rows, None]  # [B, P]
                allowed = torch.cat([visible_prefix[:, None].expand(-1, span, -1), allowed], dim=2)
            mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, blocked)[:, None]
            query_index = suffix_lengths[rows] - 1
            batch_rows = torch.arange(len(rows), device=device)
            for index, layer in enumerate(layers):
                past = None
                if prefix_cache:
                    key, value = prefix_cache[index]
                    past = (key[template[rows]], value[template[rows]])
                if index == len(layers) - 1:
                    hidden, _, _ = self._text_layer(layer, hidden, mask[batch_rows, :, query_index][:, :, None], past,
                                                    query_index)  # fmt: skip
                else:
                    hidden, _, _ = self._text_layer(layer, hidden, mask, past)
            batch_features = F.normalize(self.text_projection(text.final_layer_norm(hidden[:, 0])), dim=-1)
            if features is None:
                features = batch_features.new_empty((num_prompts, batch_features.shape[-1]))
            features[rows] = batch_features
        return features

    # --------------------------------------------------------------------------------------------- vision
    def encode_patches(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        options: NACLIPInferenceOptions | None = None,
        text_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[NACLIPForwardKwargs],
    ) -> BaseModelOutput:
        """Run the vision tower (`CLIPVisionModel.forward`) with NACLIP's last layer.

        Args:
            pixel_values: [B, 3, H, W]; H and W need not be multiples of the patch size (the remainder is
                dropped, as a strided convolution does).
            output_attentions, output_hidden_states: as for `CLIPVisionModel`.
            text_embeds: the normalised name embeddings [names, projection_dim], for dense methods that read them.
            options: this call's resolved options (`forward` passes its own); or
            kwargs: the last block for this call (`arch`, `attn_strategy`, `gaussian_std`; default: the config's).
        Returns:
            `last_hidden_state` [B, 1 + gh*gw, width]: output of the last block, before post-layernorm (with a dense
            method `arch`: its patch tokens [B, gh*gw, width], no CLS token); and the `hidden_states` /
            `attentions` asked for (with a dense method, those of the layers before the last; attention weights
            of every such layer with eager attention, with SDPA only of those the method reads).
        """
        if options is None:
            options = self.resolve_options(kwargs, LAST_BLOCK_SETTINGS)
        patch = self.config.vision_config.patch_size
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        if grid[0] < 1 or grid[1] < 1:
            raise ValueError(
                f"Input of {tuple(pixel_values.shape[-2:])} pixels is smaller than one {patch}×{patch} patch; "
                "use a larger image (or a larger short_side)."
            )
        if is_dense_method(options.arch):
            return self._encode_dense(pixel_values, grid, options, text_embeds, output_attentions,
                                      output_hidden_states)  # fmt: skip
        outputs = self.vision_model(
            pixel_values=pixel_values,
            interpolate_pos_encoding=True,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            patch_grid=grid,
            **options.of_stage("block"),
        )
        return BaseModelOutput(
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions if output_attentions else None,
        )

    def _encode_dense(
        self,
        pixel_values: torch.Tensor,
        grid: tuple[int, int],
        options: NACLIPInferenceOptions,
        text_embeds: torch.Tensor | None,
        output_attentions: bool,
        output_hidden_states: bool,
    ) -> BaseModelOutput:
        """The dense method `options.arch` on windows [B, 3, H, W]: the layers before the last run through
        `CLIPVisionModel.forward` with their hidden states captured (and the attention weights the method reads,
        from eager attention in those layers); the method's patch tokens [B, gh*gw, width] come back as
        `last_hidden_state` (float32 for SC-CLIP and SFP whatever the model's dtype)."""
        method = DENSE_METHODS[options.arch]
        depth = len(self.vision_model.encoder.layers)
        wanted = attention_layers(method, depth)
        outputs = self.vision_model(
            pixel_values=pixel_values,
            interpolate_pos_encoding=True,
            output_attentions=bool(output_attentions or wanted),
            output_hidden_states=True,
            patch_grid=grid,
            eager_attention_layers=wanted,
            **options.of_stage("block"),
        )
        recorded = tuple(outputs.attentions or ())
        eager = self.config._attn_implementation in (None, "eager")
        layers = range(depth - 1) if eager and (output_attentions or wanted) else wanted
        attentions: list[torch.Tensor | None] = [None] * (depth - 1)
        for layer, weights in zip(layers, recorded, strict=True):
            attentions[layer] = weights
        tokens = method(
            self, outputs.hidden_states, tuple(attentions), patch_grid=grid, pixel_values=pixel_values,
            text_embeds=text_embeds, settings=MappingProxyType(options.to_dict()),
        )  # fmt: skip
        return BaseModelOutput(
            last_hidden_state=tokens,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=recorded if output_attentions else None,
        )

    def resolve_options(
        self, call: dict, allowed: tuple[str, ...] = CALL_OPTIONS, options: NACLIPInferenceOptions | None = None
    ) -> NACLIPInferenceOptions:
        """This call's options, resolved once: `options` (default: the config's) with the keywords `call` on top
        (`options.resolve_options`); `TypeError` for a keyword not in `allowed`, listing those that are."""
        unknown = sorted(set(call) - set(allowed))
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            raise TypeError(
                f"{type(self).__name__}.forward() got an unexpected keyword argument {names}; the per-call options "
                f"are {', '.join(allowed)}."
            )
        if options is None:
            options = self.config.inference_options(**call)
        elif call:
            options = resolve_options(options.to_dict(), call)
        check_attention_strategy(options.attn_strategy)
        check_arch(options.arch)
        return options

    def window_logits(
        self, hidden: torch.Tensor, text_embeds: torch.Tensor, size: tuple[int, int], cls_token: bool = True
    ) -> torch.Tensor:
        """Per-name logits [B, names, H, W] (float32) from the last block's output [B, 1 + gh*gw, width] of windows of
        `size` (H, W): the patch features projected, compared with `text_embeds` [names, D] and upsampled bilinearly
        (`cls_token=False`: a dense method's patch tokens [B, gh*gw, width]).

        The head of `forward` for one window; the ONNX export traces `encode_patches` followed by this method.
        """
        return F.interpolate(self._patch_logits(hidden, text_embeds, size, cls_token), size=size, mode="bilinear",
                             align_corners=False)  # fmt: skip

    def _patch_logits(
        self, hidden: torch.Tensor, text_embeds: torch.Tensor, size: tuple[int, int], cls_token: bool = True
    ) -> torch.Tensor:
        """Per-name logits [B, names, gh, gw] (float32) at patch resolution, from the last block's output
        [B, 1 + gh*gw, width] of windows of `size` (`cls_token=False`: a dense method's patch tokens
        [B, gh*gw, width])."""
        patch = self.config.vision_config.patch_size
        if hidden.dtype == self.visual_projection.weight.dtype:
            features = self.visual_projection(self.vision_model.post_layernorm(hidden))
        else:  # a dense method's float32 tokens, projected in float32
            norm = self.vision_model.post_layernorm
            normed = F.layer_norm(hidden.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(),
                                  norm.eps)  # fmt: skip
            features = F.linear(normed, self.visual_projection.weight.float())
        if cls_token:
            features = features[:, 1:]
        # The similarity and its upsampling in float32 whatever the model's dtype: class margins are small.
        features = F.normalize(features.float(), dim=-1)
        logits = (features @ text_embeds.float().T).transpose(1, 2)
        return logits.reshape(logits.shape[0], -1, size[0] // patch, size[1] // patch)

    def _encode_windows(
        self,
        windows: torch.Tensor,
        text_embeds: torch.Tensor,
        options: NACLIPInferenceOptions,
        outputs: dict,
        add: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor | None:
        """Logits [n, names, h, w] (float32) of `windows` [n, 3, h, w]. With `window_padding="centered"` (ClearCLIP), a
        side that is not a multiple of the patch size is zero-padded on both sides to whole patches (the extra
        pixel, if odd, after) and the logits are cropped back. Hidden states / attentions go into `outputs`.

        With `add`, each window's logits [names, h, w] go to `add(index, logits)` as soon as they are upsampled and
        None is returned: memory then holds one window's full-size logits, not the batch's (the values are the same:
        the upsampling treats every window on its own)."""
        height, width = windows.shape[-2:]
        patch = self.config.vision_config.patch_size
        top = left = 0
        if options.window_padding == "centered" and (height % patch or width % patch):
            pad_h, pad_w = -height % patch, -width % patch
            top, left = pad_h // 2, pad_w // 2
            windows = F.pad(windows, (left, pad_w - left, top, pad_h - top))
        encoded = self.encode_patches(
            windows, output_attentions="attentions" in outputs, output_hidden_states="hidden_states" in outputs,
            options=options, text_embeds=text_embeds,
        )  # fmt: skip
        for name, value in outputs.items():
            value.append(getattr(encoded, name))
        size = tuple(windows.shape[-2:])
        cls_token = not is_dense_method(options.arch)
        if add is None:
            logits = self.window_logits(encoded.last_hidden_state, text_embeds, size, cls_token)
            return logits[:, :, top : top + height, left : left + width].float()
        patch_logits = self._patch_logits(encoded.last_hidden_state, text_embeds, size, cls_token)
        for index in range(len(patch_logits)):
            logits = F.interpolate(patch_logits[index : index + 1], size=size, mode="bilinear", align_corners=False)
            add(index, logits[0, :, top : top + height, left : left + width])
        return None

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        num_templates: int | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        options: NACLIPInferenceOptions | None = None,
        method: str | None = None,
        **kwargs: Unpack[NACLIPForwardKwargs],
    ) -> NACLIPSemanticSegmenterOutput:
        r"""Per-name logits at the resolution of `pixel_values`.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Normalised images of one size (see `NACLIPImageProcessor`).
            input_ids, attention_mask (`torch.LongTensor` of shape `(num_names * num_templates, length)`):
                The class names' prompts (see `NACLIPProcessor`); or
            text_embeds (`torch.FloatTensor` of shape `(num_names, projection_dim)`):
                Precomputed, normalised name embeddings (see `get_name_embeddings`).
            num_templates (`int`, *optional*): prompts per name with `input_ids` (default: the config's templates).
            output_attentions, output_hidden_states (`bool`, *optional*): return the vision tower's attention maps
                / hidden states (see `NACLIPSemanticSegmenterOutput`).
            return_dict (`bool`, *optional*): `False` returns a tuple instead of the output object.
            options (`NACLIPInferenceOptions`, *optional*): this call's options, already resolved (the pipeline
                and segmenters pass theirs); default: the config's.
            method (`str`, *optional*): a method of `options.MethodSettings` (e.g. "sclip") for this call: its
                settings over the config's (`NACLIPProcessor(..., method=...)` passes it on).
            kwargs (`NACLIPForwardKwargs`): options of this call only, on top of those: the sliding windows
                (`slide_crop`, `slide_stride`, `slide_batch_size`, `window_padding`), the last block (`arch`,
                `attn_strategy`, `gaussian_std`), and the post-processing ones and `short_side`, which the output
                carries to post-processing. Any other keyword raises a `TypeError` naming the valid ones.

        Returns:
            `NACLIPSemanticSegmenterOutput` with `logits` `(batch_size, num_names, height, width)`, `text_embeds`
            and the resolved `options`.

        Example:

        ```python
        >>> inputs = processor(images=image, text=["sky", "tree", "road, street"])
        >>> outputs = model(**inputs, slide_crop=0)  # one whole-image pass for this call
        >>> outputs.logits.shape  # (1, 4, height, width): one map per name
        ```
        """
        options = self.resolve_options({**kwargs, "method": method} if method is not None else kwargs, CALL_OPTIONS,
                                       options)  # fmt: skip
        text_embeds = self._text_embeds(input_ids, attention_mask, text_embeds, num_templates)
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            raise ValueError(f"pixel_values must be a tensor [batch, 3, height, width], got {shape}.")
        height, width = pixel_values.shape[-2:]
        patch = self.config.vision_config.patch_size
        if min(height, width) < patch:
            raise ValueError(
                f"The processed image is {height}×{width} pixels, smaller than one {patch}×{patch} patch; use a "
                f"larger image or a larger short_side (at least {patch})."
            )
        recorded: dict[str, list] = {}
        if output_hidden_states:
            recorded["hidden_states"] = []
        if output_attentions:
            recorded["attentions"] = []
        if options.slide_crop > 0:
            logits = self._slide(pixel_values, text_embeds, options, recorded)
        else:
            whole = dataclasses.replace(options, window_padding="none")  # one pass over the whole image: no padding
            logits = self._encode_windows(pixel_values, text_embeds, whole, recorded)
        return NACLIPSemanticSegmenterOutput(
            logits=logits,
            text_embeds=text_embeds,
            hidden_states=_concatenate_layers(recorded["hidden_states"]) if output_hidden_states else None,
            attentions=_concatenate_layers(recorded["attentions"]) if output_attentions else None,
            options=options,
        )

    def _text_embeds(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        text_embeds: torch.Tensor | None,
        num_templates: int | None,
    ) -> torch.Tensor:
        """The name embeddings given, or those of the prompts `input_ids`."""
        if text_embeds is not None:
            return text_embeds
        if input_ids is None:
            raise ValueError("Pass the class names' prompts as `input_ids` or their embeddings as `text_embeds`.")
        if num_templates is None:
            num_templates = len(self.config.prompt_templates or IMAGENET_TEMPLATES)
        return self.get_name_embeddings(input_ids, attention_mask, int(num_templates))

    def _slide(
        self, pixel_values: torch.Tensor, text_embeds: torch.Tensor, options: NACLIPInferenceOptions, recorded: dict
    ) -> torch.Tensor:
        """Sliding-window logits [B, names, H, W]: windows in batches (`options.window_batch_size`; image 0's first),
        each window's logits added where it lies, then divided by the number of windows covering each pixel."""
        height, width = pixel_values.shape[-2:]
        boxes = sliding_windows(height, width, options.slide_crop, options.slide_stride)
        logits = pixel_values.new_zeros((pixel_values.shape[0], len(text_embeds), height, width), dtype=torch.float32)
        tokens = window_tokens(height, width, options.slide_crop, self.config.vision_config.patch_size)
        step = window_batch_size(options.slide_batch_size, tokens, pixel_values.element_size(),
                                 pixel_values.device.type == "cpu")  # fmt: skip
        for chunk in window_batches(pixel_values.shape[0], boxes, step):
            batch = torch.stack([pixel_values[image, :, a:b, c:d] for image, (a, b, c, d) in chunk])

            def add(index: int, values: torch.Tensor, chunk: list = chunk) -> None:
                image, (a, b, c, d) = chunk[index]
                logits[image, :, a:b, c:d] += values

            self._encode_windows(batch, text_embeds, options, recorded, add=add)
        return logits.div_(torch.from_numpy(window_coverage(height, width, boxes)).to(logits.device))


def _concatenate_layers(per_chunk: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Per-layer tensors of several window batches, concatenated along the batch."""
    if len(per_chunk) == 1:
        return tuple(per_chunk[0])
    return tuple(torch.cat(layer, dim=0) for layer in zip(*per_chunk))


__all__ = [
    "NACLIP_ATTENTION_FUNCTIONS", "NACLIPAttention", "NACLIPEncoderLayer", "NACLIPForSemanticSegmentation",
    "NACLIPPreTrainedModel", "NACLIPSemanticSegmenterOutput", "NACLIPVisionEmbeddings",
    "gaussian_neighbourhood_bias", "register_attention", "sliding_windows"
]
