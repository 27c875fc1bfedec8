"""NACLIP: CLIP with a neighbour-aware last vision layer, for training-free open-vocabulary segmentation.

Everything but the last vision encoder layer is transformers' CLIP, under the same parameter names as
`CLIPModel`, so any CLIP checkpoint loads with no missing or unexpected keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModel, CLIPVisionModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer, CLIPPreTrainedModel
from transformers.utils import ModelOutput

from .configuration_naclip import NACLIPConfig
from .pamr import pamr


def gaussian_neighbourhood_bias(grid_height: int, grid_width: int, std: float) -> torch.Tensor:
    """Ω for a patch grid, with a leading zero row and column for the CLS token.

    Ω[i, j] = exp(-‖pos_i - pos_j‖² / (2 std²)) between the (row, column) positions of patches i and j.
    Returns [1 + grid_height * grid_width, 1 + grid_height * grid_width] (float32).
    """
    rows = torch.arange(grid_height, dtype=torch.float64).repeat_interleave(grid_width)
    cols = torch.arange(grid_width, dtype=torch.float64).repeat(grid_height)
    dist2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    omega = torch.exp(-dist2 / (2.0 * std * std)).float()
    return F.pad(omega, (1, 0, 1, 0))


class NACLIPAttention(CLIPAttention):
    """CLIP attention with the attention weights of NACLIP and its ablations (same parameters as `CLIPAttention`).

    Strategies (s = head_dim^-0.5, Ω the Gaussian neighbourhood bias, CLS row and column zero):
    `vanilla` softmax(s q kᵀ); `kk` softmax(s k kᵀ); `naclip` softmax(s k kᵀ + Ω);
    `nonly` softmax(c Ω) with c = s · mean_h(mean_i ‖q_i‖ · mean_j ‖k_j‖) per image;
    `csa` softmax(s q qᵀ) + softmax(s k kᵀ).
    """

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        strategy: str = "naclip",
        neighbourhood_bias: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """hidden_states [B, T, D] -> ([B, T, D], None). `neighbourhood_bias` [T, T] is needed by naclip/nonly."""
        batch, tokens, _ = hidden_states.shape
        shape = (batch, tokens, self.num_heads, self.head_dim)
        values = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        keys = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        needs_queries = strategy in ("vanilla", "csa", "nonly")
        queries = self.q_proj(hidden_states).view(shape).transpose(1, 2) if needs_queries else None
        use_sdpa = self.config._attn_implementation == "sdpa"

        def attend(left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
            # softmax(s · left rightᵀ + bias) · values
            if use_sdpa:
                mask = None if bias is None else bias.to(left.dtype)
                return F.scaled_dot_product_attention(left, right, values, attn_mask=mask, scale=self.scale)
            weights = torch.matmul(left, right.transpose(-1, -2)) * self.scale
            if bias is not None:
                weights = weights + bias
            return torch.matmul(weights.softmax(dim=-1, dtype=torch.float32).to(values.dtype), values)

        if strategy == "vanilla":
            output = attend(queries, keys)
        elif strategy == "kk":
            output = attend(keys, keys)
        elif strategy == "naclip":
            output = attend(keys, keys, neighbourhood_bias)
        elif strategy == "csa":
            output = attend(queries, queries) + attend(keys, keys)
        elif strategy == "nonly":
            mean_q = queries.norm(dim=-1).mean(dim=-1)  # [B, heads]
            mean_k = keys.norm(dim=-1).mean(dim=-1)
            coefficient = self.scale * (mean_q * mean_k).mean(dim=-1)  # [B]
            weights = (coefficient.view(batch, 1, 1, 1) * neighbourhood_bias).softmax(dim=-1)
            output = torch.matmul(weights.to(values.dtype), values)
        else:
            raise ValueError(f"Unknown attention strategy {strategy!r}.")
        output = output.transpose(1, 2).reshape(batch, tokens, -1)
        return self.out_proj(output), None


class NACLIPEncoderLayer(CLIPEncoderLayer):
    """The last CLIP vision encoder layer, run as NACLIP's `reduced` or the usual `vanilla` block."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.self_attn = NACLIPAttention(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        arch: str = "reduced",
        strategy: str = "naclip",
        neighbourhood_bias: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """hidden_states [B, T, D] -> [B, T, D]."""
        attended, _ = self.self_attn(
            self.layer_norm1(hidden_states), strategy=strategy, neighbourhood_bias=neighbourhood_bias
        )
        if arch == "reduced":
            return attended
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


@dataclass
class NACLIPSemanticSegmenterOutput(ModelOutput):
    """
    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_names, height, width)`):
            Cosine similarity between every pixel's feature and every class name's text embedding, at the
            resolution of `pixel_values` (patch logits upsampled bilinearly; windows averaged where they overlap).
        text_embeds (`torch.FloatTensor` of shape `(num_names, projection_dim)`):
            The L2-normalised class-name embeddings used.
    """

    logits: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Window boxes (y1, y2, x1, x2) covering an image, placed as the official NACLIP/MMSeg code places them:
    a regular grid whose last row/column is shifted back to end at the border; windows are cropped to the image
    when it is smaller than `crop`."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


class NACLIPForSemanticSegmentation(CLIPPreTrainedModel):
    """CLIP with NACLIP's last vision layer: per-pixel open-vocabulary segmentation with no training.

    `forward` returns per-name logits at the processed resolution; `post_process_logits` turns them into class
    probabilities and a label map at the original image size (PAMR, temperature softmax, synonyms merged).
    """

    config_class = NACLIPConfig
    config: NACLIPConfig
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
        layers = self.vision_model.encoder.layers
        layers[-1] = NACLIPEncoderLayer(vision_config)
        self._bias_cache: dict[tuple, torch.Tensor] = {}
        self.post_init()

    # ----------------------------------------------------------------------------------------------- text
    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids [N, L] -> projected EOS features [N, projection_dim] (not normalised)."""
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.text_projection(pooled)

    @torch.no_grad()
    def get_name_embeddings(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, num_templates: int
    ) -> torch.Tensor:
        """Embed class names from their prompts.

        Args:
            input_ids: [num_names * num_templates, L], the prompts of name 0 first, then name 1, ...
            attention_mask: [num_names * num_templates, L] or None.
            num_templates: prompts per name.
        Returns:
            [num_names, projection_dim]: per name, the mean of its L2-normalised prompt embeddings, normalised.
        """
        if input_ids.shape[0] % num_templates:
            raise ValueError(
                f"{input_ids.shape[0]} prompts cannot be split into groups of {num_templates} templates."
            )
        batch_size = self.config.text_batch_size
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
        per_prompt = features.view(-1, num_templates, features.shape[-1])
        return F.normalize(per_prompt.mean(dim=1), dim=-1)

    # --------------------------------------------------------------------------------------------- vision
    def _position_embeddings(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """Positional embeddings [1 + gh*gw, width] for a patch grid, resized as the config says."""
        table = self.vision_model.embeddings.position_embedding.weight
        pretrained_grid = int(math.isqrt(table.shape[0] - 1))
        if (grid_height, grid_width) == (pretrained_grid, pretrained_grid):
            return table
        cls_pos, patch_pos = table[:1], table[1:]
        patch_pos = patch_pos.reshape(1, pretrained_grid, pretrained_grid, -1).permute(0, 3, 1, 2)
        if self.config.pos_embed_interpolation == "official":
            # Scale factors with +0.1 (DINO's guard against float error), not a target size: the two differ.
            patch_pos = F.interpolate(
                patch_pos.float(),
                scale_factor=((grid_height + 0.1) / pretrained_grid, (grid_width + 0.1) / pretrained_grid),
                mode="bicubic",
                align_corners=False,
                recompute_scale_factor=False,
            )
        else:
            patch_pos = F.interpolate(
                patch_pos.float(), size=(grid_height, grid_width), mode="bicubic", align_corners=False
            )
        patch_pos = patch_pos.to(table.dtype).permute(0, 2, 3, 1).reshape(grid_height * grid_width, -1)
        return torch.cat([cls_pos, patch_pos], dim=0)

    def _neighbourhood_bias(self, grid_height: int, grid_width: int, device, dtype) -> torch.Tensor:
        key = (grid_height, grid_width, float(self.config.gaussian_std), str(device), dtype)
        bias = self._bias_cache.get(key)
        if bias is None:
            bias = gaussian_neighbourhood_bias(grid_height, grid_width, self.config.gaussian_std).to(
                device, dtype
            )
            self._bias_cache = {key: bias}  # keep one grid: sliding windows share it
        return bias

    def encode_patches(
        self, pixel_values: torch.Tensor, position_embeddings: torch.Tensor | None = None
    ) -> BaseModelOutput:
        """Run the vision tower with NACLIP's last layer.

        Args:
            pixel_values: [B, 3, H, W]; H and W need not be multiples of the patch size (the remainder is
                dropped, as a strided convolution does).
            position_embeddings: optional precomputed [1 + gh*gw, width] for this grid (reused across windows).
        Returns:
            `last_hidden_state` [B, 1 + gh*gw, width]: output of the last block, before post-layernorm.
        """
        embeddings = self.vision_model.embeddings
        patch = embeddings.patch_size
        grid_height, grid_width = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
        if grid_height < 1 or grid_width < 1:
            raise ValueError(
                f"Input of {tuple(pixel_values.shape[-2:])} pixels is smaller than one {patch}×{patch} patch; "
                "use a larger image (or a larger short_side)."
            )
        dtype = embeddings.patch_embedding.weight.dtype
        tokens = embeddings.patch_embedding(pixel_values.to(dtype)).flatten(2).transpose(1, 2)
        cls = embeddings.class_embedding.to(dtype).expand(tokens.shape[0], 1, -1)
        if position_embeddings is None:
            position_embeddings = self._position_embeddings(grid_height, grid_width)
        hidden = torch.cat([cls, tokens], dim=1) + position_embeddings.to(dtype)
        hidden = self.vision_model.pre_layrnorm(hidden)
        *early_layers, last_layer = self.vision_model.encoder.layers
        for layer in early_layers:
            hidden = layer(hidden, None)
        strategy = self.config.attn_strategy
        bias = None
        if strategy in ("naclip", "nonly"):
            bias = self._neighbourhood_bias(grid_height, grid_width, hidden.device, torch.float32)
        hidden = last_layer(hidden, None, arch=self.config.arch, strategy=strategy, neighbourhood_bias=bias)
        return BaseModelOutput(last_hidden_state=hidden)

    def _window_logits(
        self, pixel_values: torch.Tensor, text_embeds: torch.Tensor, position_embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-name logits [B, names, H, W] of windows [B, 3, H, W]."""
        hidden = self.encode_patches(pixel_values, position_embeddings).last_hidden_state
        features = self.visual_projection(self.vision_model.post_layernorm(hidden))[:, 1:]
        features = F.normalize(features, dim=-1)
        patch = self.vision_model.embeddings.patch_size
        grid_height, grid_width = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
        logits = (features @ text_embeds.to(features.dtype).T).transpose(1, 2)
        logits = logits.reshape(logits.shape[0], -1, grid_height, grid_width)
        return F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        num_templates: int | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> NACLIPSemanticSegmenterOutput | tuple:
        """Per-name logits at the resolution of `pixel_values`.

        Args:
            pixel_values: [B, 3, H, W] normalised images of one size.
            input_ids, attention_mask: [names * templates, L] prompts (see `get_name_embeddings`), or
            text_embeds: [names, projection_dim] precomputed, normalised name embeddings.
            num_templates: prompts per name with `input_ids` (default: the config's template count).
        Returns:
            `NACLIPSemanticSegmenterOutput` with `logits` [B, names, H, W] and `text_embeds`.
        """
        self.config.check_naclip_settings()
        if text_embeds is None:
            if input_ids is None:
                raise ValueError(
                    "Pass the class names' prompts as `input_ids` or their embeddings as `text_embeds`."
                )
            if num_templates is None:
                templates = self.config.prompt_templates
                num_templates = 80 if templates is None else len(templates)
            text_embeds = self.get_name_embeddings(input_ids, attention_mask, num_templates)
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be [batch, 3, height, width], got shape {tuple(pixel_values.shape)}."
            )
        if self.config.slide_crop > 0:
            logits = self._slide(pixel_values, text_embeds)
        else:
            logits = self._window_logits(pixel_values, text_embeds, None)
        if return_dict is False:
            return (logits, text_embeds)
        return NACLIPSemanticSegmenterOutput(logits=logits, text_embeds=text_embeds)

    def _slide(self, pixel_values: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits [B, names, H, W]: windows run in batches, summed, divided by their overlap."""
        batch, _, height, width = pixel_values.shape
        crop, stride = self.config.slide_crop, self.config.slide_stride
        boxes = sliding_windows(height, width, crop, stride)
        # Every window has the same size, so positional embeddings and the Gaussian bias are computed once.
        y1, y2, x1, x2 = boxes[0]
        patch = self.vision_model.embeddings.patch_size
        position_embeddings = self._position_embeddings((y2 - y1) // patch, (x2 - x1) // patch)
        total = pixel_values.new_zeros((batch, text_embeds.shape[0], height, width), dtype=torch.float32)
        count = pixel_values.new_zeros((1, 1, height, width), dtype=torch.float32)
        step = self.config.slide_batch_size
        for image in range(batch):
            for start in range(0, len(boxes), step):
                chunk = boxes[start : start + step]
                windows = torch.stack([pixel_values[image, :, a:b, c:d] for a, b, c, d in chunk])
                logits = self._window_logits(windows, text_embeds, position_embeddings).float()
                for (a, b, c, d), window_logits in zip(chunk, logits):
                    total[image, :, a:b, c:d] += window_logits
        for a, b, c, d in boxes:
            count[..., a:b, c:d] += 1
        return total / count

    # ------------------------------------------------------------------------------------- post-processing
    @torch.no_grad()
    def post_process_logits(
        self,
        logits: torch.Tensor,
        pixel_values: torch.Tensor | None,
        original_size: Sequence[int],
        name_to_class: Sequence[int] | torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """From per-name logits at the processed size to class probabilities and labels at the original size.

        Args:
            logits: [B, names, h, w] from `forward`.
            pixel_values: [B, 3, h, w], the model input (PAMR's guide image); may be None if `pamr_steps == 0`.
            original_size: (H, W) of the image before resizing.
            name_to_class: [names] class index of each name (synonyms share a class).
        Returns:
            probabilities [B, classes, H, W] (summing to 1 over classes) and segmentation [B, H, W] (int64):
            argmax over classes, with pixels whose top probability is below `prob_thd` set to class 0.
        """
        height, width = int(original_size[0]), int(original_size[1])
        logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
        if self.config.pamr_steps > 0:
            if pixel_values is None:
                raise ValueError(
                    "PAMR needs the model input as guide image: pass pixel_values (or pamr_steps=0)."
                )
            guide = F.interpolate(
                pixel_values.float(), size=(height, width), mode="bilinear", align_corners=False
            )
            logits = pamr(guide, logits, self.config.pamr_steps, self.config.pamr_dilations)
        probs = (logits * self.config.logit_scale).softmax(dim=1)
        index = torch.as_tensor(name_to_class, dtype=torch.long, device=probs.device)
        if index.numel() != probs.shape[1]:
            raise ValueError(f"name_to_class has {index.numel()} entries for {probs.shape[1]} names.")
        num_classes = int(index.max()) + 1
        if num_classes != probs.shape[1]:
            merged = probs.new_full((probs.shape[0], num_classes, height, width), -1.0)
            probs = merged.scatter_reduce_(1, index.view(1, -1, 1, 1).expand_as(probs), probs, reduce="amax")
        segmentation = probs.argmax(dim=1)
        segmentation[probs.amax(dim=1) < self.config.prob_thd] = 0
        return probs / probs.sum(dim=1, keepdim=True), segmentation


__all__ = ["NACLIPForSemanticSegmentation", "NACLIPSemanticSegmenterOutput", "gaussian_neighbourhood_bias"]
