"""Methods that build the final patch tokens from CLIP's intermediate blocks instead of running the last block.

SC-CLIP and SFP (and ResCLIP, in `resclip.py`) read the outputs, and some the attention weights, of the blocks
before the last one, repair outlier tokens, and apply only parts of the last block (its LayerNorm and attention
projections) in their own way. Their inputs come from CLIP's own vision forward: `NACLIPForSemanticSegmentation`
runs every block but the last through `CLIPVisionModel.forward`, captures the hidden states and attention weights
as transformers captures them (`output_hidden_states` / `output_attentions`; eager attention only in the layers
whose weights a method reads), and hands them to the method's entry of `DenseMethodInterface`.

A method is selected with the `arch` setting: `arch="scclip"` (any name of `DENSE_METHODS`) replaces the last
block by that method; `arch="reduced"` / `"vanilla"` run it as a block (NACLIP and the other attention methods).
Adding a method is one function with the signature below plus one registry entry
(`register_dense_method(name, function)`), and its settings in `options.SETTINGS` if it has new ones:

```python
def method_block(model, hidden_states, attentions, *, patch_grid, pixel_values, text_embeds, settings) -> Tensor
```

- `model`: the `NACLIPForSemanticSegmentation` (`model.vision_model.encoder.layers[-1]` is CLIP's last layer);
- `hidden_states`: as `CLIPVisionModel` returns them with `output_hidden_states`: index 0 the input of block 0
  (after the pre-LayerNorm), index k + 1 the output of block k, for blocks 0 … L-2, each [B, 1 + rows*cols, width];
- `attentions`: one entry per block 0 … L-2: the weights [B, heads, T, T] of the blocks the method declares with
  `@reads_attentions(...)` (every block if it declares none); the other entries are None, unless the model runs
  eager attention everywhere (then every block's weights are there);
- `patch_grid`: (rows, cols); `pixel_values`: the windows [B, 3, h, w] (normalised); `text_embeds`: the
  normalised name embeddings [names, projection_dim] (or None when the caller has none);
- `settings`: the resolved settings of the call by name (a read-only mapping).

It returns the patch tokens [B, rows*cols, width] (no CLS token) that replace the last block's output: the model
applies `post_layernorm` and `visual_projection` to them (in float32 when the tokens are float32, as SC-CLIP's and
SFP's are: they compute in float32 whatever the model's dtype). Every statistic is computed per window, so a batch of
windows gives the same tokens as one call per window.

Layer indices: the official methods hard-code those of a 12-layer ViT-B/16. `layer_plan` keeps them for 12
layers and scales them with the depth for other models (see there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils.generic import GeneralInterface

from .options import BLOCK_ARCHS
from .resclip import rcs_layer_indices, resclip_block

# The official constants of both methods.
SIMILARITY_THRESHOLD = 0.4  # similarities below it are set to 0 (SC-CLIP's beta; SFP's hard-coded 0.4)
PRIOR_SHARPNESS = 3.0  # the similarity prior is 3 · (S - mean(S)), negatives masked out
CLS_RESIDUAL = 0.3  # res_cls: the CLS token added to every patch token after the last attention
AGGREGATE_EPS = 1e-6
LOF_NEIGHBOURS = 30
LOF_CONTAMINATION = 0.05
SOM_TOP_K = 10
SOM_CLS_SCALE = CLS_RESIDUAL * 5.0  # SFP multiplies the CLS→patch weights by res_cls · res_scale = 1.5


# ------------------------------------------------------------------------------------------------ layers
@dataclass(frozen=True)
class LayerPlan:
    """Which blocks (0-based) a method reads, for a vision tower of some depth.

    Attributes:
        outliers: the last block run (depth - 2): its output is repaired and its attention gives SFP's outliers.
        pre: the block whose (repaired) patch similarities aggregate the tokens before the last attention.
        post: the block whose patch similarities aggregate them after it.
        multi: the blocks summed for the multi-level branch.
    """

    outliers: int
    pre: int
    post: int
    multi: range


def layer_plan(depth: int) -> LayerPlan:
    """The blocks read by SC-CLIP and SFP in a vision tower of `depth` layers.

    For 12 layers these are the official indices (outliers 10, pre 8, post 3, multi 3 … 9). For another depth
    each official index k becomes round(k · depth / 12) (halves up), at most depth - 2, and the outliers come from
    the last block run: ViT-L/14's 24 layers give outliers 22, pre 16, post 6, multi 6 … 19, i.e. the same
    relative depths as in ViT-B/16. (Run on another depth, the official code keeps its absolute indices 8, 3 and
    3 … 9 — SFP hard-codes them, SC-CLIP's configs give no others — with the outliers at depth - 2.)

    >>> layer_plan(12)
    LayerPlan(outliers=10, pre=8, post=3, multi=range(3, 10))
    """
    if depth < 2:
        raise ValueError(f"The dense methods need at least 2 vision layers, the model has {depth}.")
    last = depth - 2

    def scaled(index: int) -> int:
        return min(last, (index * depth + 6) // 12)

    end = min(last + 1, (10 * depth + 6) // 12)
    start = min(scaled(3), end - 1)
    return LayerPlan(outliers=last, pre=scaled(8), post=scaled(3), multi=range(start, end))


def block_output(hidden_states: Sequence[torch.Tensor], block: int) -> torch.Tensor:
    """The output of `block` (0-based) [B, 1 + N, width] in float32, from `CLIPVisionModel`'s hidden states."""
    return hidden_states[block + 1].float()


# ------------------------------------------------------------------------------------------- statistics
def cosine_similarity_matrix(tokens: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D] -> cosine similarities [B, N, N] (float32)."""
    tokens = tokens.float()
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    return unit @ unit.transpose(-1, -2)


def thresholded(similarity: torch.Tensor, threshold: float = SIMILARITY_THRESHOLD) -> torch.Tensor:
    """A copy of `similarity` [B, N, N] with the entries below `threshold` set to 0."""
    return similarity.masked_fill(similarity < threshold, 0.0)


def aggregate(tokens: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """Each token replaced by the similarity-weighted mean of all tokens: tokens [B, N, D], similarity [B, N, N]
    (rows divided by their sum + 1e-6) -> [B, N, D] in the dtype of `tokens`."""
    weights = similarity / (similarity.sum(dim=-1, keepdim=True) + AGGREGATE_EPS)
    return weights.to(tokens.dtype) @ tokens


def similarity_prior(similarity: torch.Tensor) -> torch.Tensor:
    """Attention logits from similarities [B, N, N]: 3 · (S - mean(S)) with the mean over each window's N² entries,
    negative entries -inf. Returns [B, 1, N, N] (broadcast over heads)."""
    centred = (similarity - similarity.mean(dim=(-2, -1), keepdim=True)) * PRIOR_SHARPNESS
    return centred.masked_fill(centred < 0.0, float("-inf"))[:, None]


def lof_outliers(
    tokens: torch.Tensor, neighbours: int = LOF_NEIGHBOURS, contamination: float = LOF_CONTAMINATION
) -> torch.Tensor:
    """SC-CLIP's outliers by the local outlier factor, per window: tokens [B, N, D] -> mask [B, N] (bool).

    Squared Euclidean distances; each token's `neighbours` nearest others (the first of the `neighbours + 1`
    smallest distances is taken as the token itself); reach distance = the token's own k-distance (as the official
    code computes it); LRD = k / mean reach (a NaN mean becomes 1e-6); LOF = mean over the neighbours of their LRD
    divided by the token's. Outliers: LOF strictly above the window's (1 - contamination) quantile.

    With fewer than `neighbours + 1` tokens every other token is a neighbour (k = N - 1; the official code fails);
    a window of one token, or whose LOF are all equal or undefined (NaN), has no outlier.
    """
    batch, count = tokens.shape[:2]
    k = min(neighbours, count - 1)
    if k < 1:
        return torch.zeros(batch, count, dtype=torch.bool, device=tokens.device)
    points = tokens.float()
    distances = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    nearest, index = torch.topk(distances, k=k + 1, dim=-1, largest=False)
    nearest, index = nearest[..., 1:], index[..., 1:]
    reach = torch.maximum(nearest, nearest[..., -1:].expand_as(nearest))
    density = k / torch.nan_to_num(reach.mean(dim=-1), nan=1e-6)  # [B, N]
    neighbour_density = torch.gather(density[:, None, :].expand(-1, count, -1), 2, index)
    factor = (neighbour_density / density[..., None]).mean(dim=-1)
    threshold = torch.quantile(factor, 1.0 - contamination, dim=-1, keepdim=True)
    return factor > threshold


def som_outliers(attention: torch.Tensor, top_k: int = SOM_TOP_K, cls_scale: float = SOM_CLS_SCALE) -> torch.Tensor:
    """SFP's outliers from one block's attention weights [B, heads, 1 + N, 1 + N] -> mask [B, N] (bool).

    Per window, averaged over heads: c_j = the CLS token's weight on patch j (scaled by `cls_scale`, as SFP scales
    it), d_j = patch j's weight on itself. Patches with c_j > d_j are salient; the `top_k` of largest c_j are the
    outliers (fewer if fewer are salient).
    """
    weights = attention.float()
    to_patches = (weights[:, :, 0, 1:] * cls_scale).mean(dim=1)  # [B, N]
    on_itself = torch.diagonal(weights[:, :, 1:, 1:], dim1=-2, dim2=-1).mean(dim=1)
    salient = to_patches > on_itself
    scores = to_patches.masked_fill(~salient, float("-inf"))
    values, index = torch.topk(scores, k=min(top_k, scores.shape[-1]), dim=-1)
    mask = torch.zeros_like(salient)
    return mask.scatter_(1, index, values > float("-inf"))


def repair_outliers(tokens: torch.Tensor, outliers: torch.Tensor, patch_grid: tuple[int, int]) -> torch.Tensor:
    """Each outlier token replaced by the mean of its kept (non-outlier) neighbours among the 8 around it.

    tokens [B, N, D] in row-major order over `patch_grid` (rows, cols), outliers [B, N] bool -> [B, N, D]. An
    outlier none of whose in-grid neighbours is kept keeps its own value (SC-CLIP's rule; SFP's code zeroes it,
    which makes the window NaN later). Positions are (index // cols, index % cols) on any grid.
    """
    batch, count, width = tokens.shape
    rows, cols = patch_grid
    feature_map = tokens.transpose(1, 2).reshape(batch, width, rows, cols)
    outlier_map = outliers.view(batch, 1, rows, cols)
    kept = (~outlier_map).to(tokens.dtype)
    kernel = torch.ones(width, 1, 3, 3, dtype=tokens.dtype, device=tokens.device)
    kernel[:, :, 1, 1] = 0
    neighbour_sum = F.conv2d(F.pad(feature_map * kept, (1, 1, 1, 1)), kernel, groups=width)
    neighbour_count = F.conv2d(F.pad(kept, (1, 1, 1, 1)), kernel[:1])
    mean = neighbour_sum / neighbour_count.clamp(min=1)
    repaired = torch.where(outlier_map & (neighbour_count > 0), mean, feature_map)
    return repaired.reshape(batch, width, count).transpose(1, 2)


# -------------------------------------------------------------------------------- the last layer, in parts
# The methods compute in float32 whatever the model's dtype (their similarity thresholds, outlier statistics and
# small class margins need it; it costs one layer's weights): the last layer's pieces run with float32 copies of
# its weights (the weights themselves for a float32 model).
def _layer_norm(module: nn.LayerNorm, tokens: torch.Tensor) -> torch.Tensor:
    """`module` (a LayerNorm) applied in float32: [..., width] -> [..., width] float32."""
    weight = None if module.weight is None else module.weight.float()
    bias = None if module.bias is None else module.bias.float()
    return F.layer_norm(tokens.float(), module.normalized_shape, weight, bias, module.eps)


def _linear(module: nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
    """`module` (a Linear) applied in float32."""
    return F.linear(tokens.float(), module.weight.float(), None if module.bias is None else module.bias.float())


def _heads(attention: nn.Module, projected: torch.Tensor) -> torch.Tensor:
    """[B, N, width] -> [B, heads, N, head_dim]."""
    return projected.view(*projected.shape[:-1], -1, attention.head_dim).transpose(1, 2)


def _attend(attention: nn.Module, weights: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """out_proj(weights · value): weights [B, heads, N, N], value [B, heads, N, head_dim] -> [B, N, width]."""
    output = (weights.to(value.dtype) @ value).transpose(1, 2)
    return _linear(attention.out_proj, output.reshape(*output.shape[:2], -1))


def _self_softmax(attention: nn.Module, projected: torch.Tensor) -> torch.Tensor:
    """softmax(s · x xᵀ) per head (float32): projected [B, heads, N, head_dim] -> [B, heads, N, N]."""
    scores = (projected @ projected.transpose(-1, -2)) * attention.scale
    return scores.float().softmax(dim=-1)


def scclip_attention(layer: nn.Module, tokens: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """SC-CLIP's last attention on patch tokens [B, N, width] (no residual, no MLP): per head
    (softmax(prior) + softmax(s·k kᵀ)) / 2 with prior [B, 1, N, N] -> [B, N, width]."""
    attention = layer.self_attn
    normed = _layer_norm(layer.layer_norm1, tokens)
    key = _heads(attention, _linear(attention.k_proj, normed))
    value = _heads(attention, _linear(attention.v_proj, normed))
    weights = (prior.softmax(dim=-1) + _self_softmax(attention, key)) / 2
    return _attend(attention, weights, value)


def sfp_attention(layer: nn.Module, tokens: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """SFP's last attention on patch tokens [B, N, width]: per head (softmax(s·k kᵀ) + softmax(s·q qᵀ) +
    softmax(prior)) / 3 with prior [B, 1, N, N] -> [B, N, width]."""
    attention = layer.self_attn
    normed = _layer_norm(layer.layer_norm1, tokens)
    query = _heads(attention, _linear(attention.q_proj, normed))
    key = _heads(attention, _linear(attention.k_proj, normed))
    value = _heads(attention, _linear(attention.v_proj, normed))
    weights = (_self_softmax(attention, key) + _self_softmax(attention, query) + prior.softmax(dim=-1)) / 3
    return _attend(attention, weights, value)


def prior_attention(layer: nn.Module, tokens: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Attention by the similarity prior alone (SFP's multi-level branch): out_proj(softmax(prior) · v), tokens
    [B, N, width], prior [B, 1, N, N] -> [B, N, width]."""
    attention = layer.self_attn
    value = _heads(attention, _linear(attention.v_proj, _layer_norm(layer.layer_norm1, tokens)))
    return _attend(attention, prior.softmax(dim=-1).expand(-1, value.shape[1], -1, -1), value)


# ------------------------------------------------------------------------------------------- the methods
def reads_attentions(layers: Callable[[int], Sequence[int]]) -> Callable[[Callable], Callable]:
    """Declare which blocks' attention weights a method reads: `layers(depth)` -> block indices (0-based, below
    depth - 1). Those blocks run eager attention so that their weights are captured; a method without this
    declaration gets every block's weights."""

    def declare(function: Callable) -> Callable:
        function.attention_layers = layers
        return function

    return declare


@reads_attentions(lambda depth: ())
def scclip_block(
    model: nn.Module,
    hidden_states: Sequence[torch.Tensor],
    attentions: Sequence[torch.Tensor | None],
    *,
    patch_grid: tuple[int, int],
    pixel_values: torch.Tensor | None = None,
    text_embeds: torch.Tensor | None = None,
    settings: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """SC-CLIP (Self-Calibrated CLIP): patch tokens [B, rows*cols, width] from the blocks' outputs.

    LOF outliers among the patch tokens of the last block run are repaired (there and in block `pre`); its patch
    tokens are aggregated by the thresholded similarities of the repaired block `pre`, go through the last
    attention (similarity prior + key-key) plus 0.3 · its CLS token, and are aggregated by block `post`'s
    thresholded similarities; the same attention on the sum of blocks `multi` (plus 0.3 · that sum's CLS token),
    aggregated alike, is added. The prior uses the similarities before thresholding.
    """
    plan = layer_plan(len(model.vision_model.encoder.layers))
    layer = model.vision_model.encoder.layers[-1]
    last = block_output(hidden_states, plan.outliers)
    outliers = lof_outliers(last[:, 1:])
    tokens = repair_outliers(last[:, 1:], outliers, patch_grid)
    pre = cosine_similarity_matrix(repair_outliers(block_output(hidden_states, plan.pre)[:, 1:], outliers, patch_grid))
    prior = similarity_prior(pre)
    tokens = aggregate(tokens, thresholded(pre))
    tokens = scclip_attention(layer, tokens, prior) + CLS_RESIDUAL * last[:, :1]
    post = thresholded(cosine_similarity_matrix(block_output(hidden_states, plan.post)[:, 1:]))
    tokens = aggregate(tokens, post)
    summed = torch.zeros_like(last)
    for block in plan.multi:
        summed = summed + block_output(hidden_states, block)
    multi = scclip_attention(layer, summed[:, 1:], prior) + CLS_RESIDUAL * summed[:, :1]
    return tokens + aggregate(multi, post)


@reads_attentions(lambda depth: (layer_plan(depth).outliers,))
def sfp_block(
    model: nn.Module,
    hidden_states: Sequence[torch.Tensor],
    attentions: Sequence[torch.Tensor | None],
    *,
    patch_grid: tuple[int, int],
    pixel_values: torch.Tensor | None = None,
    text_embeds: torch.Tensor | None = None,
    settings: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """SFP (Self-adaptive Feature Purifier): patch tokens [B, rows*cols, width] from the blocks' outputs and the
    attention weights of the last block run.

    Outliers are the patches the CLS token attends to more than to themselves (the 10 strongest, `som_outliers`),
    repaired in the last block run and in block `pre` (an outlier with no kept neighbour keeps its value). The
    thresholded similarities of the repaired block `pre` aggregate the tokens and are also the attention prior;
    the last attention mixes key-key, query-query and the prior, plus 0.3 · the CLS token; block `post`'s
    thresholded similarities aggregate the result. The sum of blocks `multi` goes through the prior alone (plus
    0.3 · its CLS token), is aggregated alike and added.
    """
    plan = layer_plan(len(model.vision_model.encoder.layers))
    layer = model.vision_model.encoder.layers[-1]
    if attentions[plan.outliers] is None:
        raise ValueError(f"SFP needs the attention weights of block {plan.outliers}.")
    last = block_output(hidden_states, plan.outliers)
    outliers = som_outliers(attentions[plan.outliers])
    tokens = repair_outliers(last[:, 1:], outliers, patch_grid)
    summed = torch.stack([block_output(hidden_states, block) for block in plan.multi]).sum(dim=0)
    pre = repair_outliers(block_output(hidden_states, plan.pre)[:, 1:], outliers, patch_grid)
    pre = thresholded(cosine_similarity_matrix(pre))
    prior = similarity_prior(pre)
    tokens = aggregate(tokens, pre)
    tokens = sfp_attention(layer, tokens, prior) + CLS_RESIDUAL * last[:, :1]
    post = thresholded(cosine_similarity_matrix(block_output(hidden_states, plan.post)[:, 1:]))
    tokens = aggregate(tokens, post)
    multi = prior_attention(layer, summed[:, 1:], prior) + CLS_RESIDUAL * summed[:, :1]
    return tokens + aggregate(multi, post)


# ---------------------------------------------------------------------------------------------- registry
class DenseMethodInterface(GeneralInterface):
    """The methods that replace the last block, by name, in the style of transformers' `AttentionInterface`:
    `DenseMethodInterface.register(name, function)` adds one for every model; an instance's own entries
    (`interface[name] = function`) override the class-wide ones for that instance only. `arch=name` selects one.
    See the module docstring for a function's signature."""

    _global_mapping = {
        "scclip": scclip_block,
        "sfp": sfp_block,
        "resclip": reads_attentions(rcs_layer_indices)(resclip_block),
    }


# The registry the model reads.
DENSE_METHODS = DenseMethodInterface()


def register_dense_method(name: str, function: Callable) -> None:
    """Make `function` available as `arch=name` for every model (see the module docstring for its signature)."""
    if name in BLOCK_ARCHS:
        raise ValueError(f"{name!r} is a block architecture, not a free name for a dense method.")
    DenseMethodInterface.register(name, function)


def is_dense_method(arch: str) -> bool:
    """Whether `arch` names a dense method (and not a block architecture)."""
    return arch not in BLOCK_ARCHS and arch in DENSE_METHODS


def check_arch(arch: str) -> None:
    """Raise `ValueError` unless `arch` is a block architecture or a registered dense method."""
    if arch not in BLOCK_ARCHS and arch not in DENSE_METHODS:
        raise ValueError(
            f"arch={arch!r} is invalid: it must be one of {', '.join((*BLOCK_ARCHS, *DENSE_METHODS))} (register a "
            "new dense method with naclip_hf.models.naclip.dense_methods.register_dense_method)."
        )


def attention_layers(function: Callable, depth: int) -> tuple[int, ...]:
    """The blocks whose attention weights `function` reads (its `reads_attentions` declaration; all blocks before
    the last when it declares none), sorted."""
    declared = getattr(function, "attention_layers", None)
    layers = tuple(sorted({int(layer) for layer in (range(depth - 1) if declared is None else declared(depth))}))
    if layers and not 0 <= layers[0] <= layers[-1] < depth - 1:
        raise ValueError(f"A dense method may read the attention of blocks 0 … {depth - 2}, not {list(layers)}.")
    return layers


__all__ = [
    "BLOCK_ARCHS", "DENSE_METHODS", "DenseMethodInterface", "LayerPlan", "aggregate", "attention_layers",
    "check_arch", "cosine_similarity_matrix", "is_dense_method", "layer_plan", "lof_outliers", "reads_attentions",
    "register_dense_method", "repair_outliers", "scclip_block", "sfp_block", "som_outliers", "similarity_prior",
]
