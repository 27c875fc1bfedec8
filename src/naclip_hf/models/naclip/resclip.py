"""ResCLIP (Yang et al., CVPR 2025) on top of NACLIP's last block, as small functions.

ResCLIP changes only how the last vision block attends; the other blocks are CLIP's own. Two modules:

- **RCS** (residual cross-correlation self-attention): the last block's attention weights are blended with the
  mean of the ordinary (query-key) attention weights of some intermediate blocks (`rcs_attention`).
- **SFR** (semantic feedback refinement): a first pass of the last block (with RCS, without SFR) gives a label
  per patch; patches with the same label, joined by a straight path that stays in that label, attract each other
  (`sfr_patch_labels`, `sfr_connectivity`, `sfr_affinity`). The second pass blends that affinity into the scores.

The last block's attention (`resclip_attention`), per head, with `s` = head_dim^-½, Ω = NACLIP's Gaussian
neighbourhood bias, (τ_sfr, λ_sfr) = `attn_sfr_weights` and (τ_rcs, λ_rcs) = `attn_rcs_weights`:

    L = s · k kᵀ
    L = τ_sfr · ((1 − λ_sfr) · L + λ_sfr · B)      with SFR only; B = A_sfr / max(A_sfr) rounded to float16
    P = softmax(L + Ω)
    P = τ_rcs · ((1 − λ_rcs) · P + λ_rcs · A_rcs)  rows then sum to τ_rcs, not 1 (as the official code)

and the block keeps neither residual nor MLP (NACLIP's `reduced` arch). `resclip_block` is the entry point.

Every step reproduces the official implementation (github.com/yvhangyang/ResCLIP, `clip/model.py`) to float
rounding, including its quirks: SFR labels are class-*name* indices; low-confidence pixels take name 0; each patch
takes its most frequent pixel label (ties: the smallest); the path rule samples the segment at the resolution of
the largest distance in the grid but stops at the pair's own distance; the affinity is blurred along the
flattened (row-major) patch index with a 1-D Gaussian; λ_sfr · B is computed in float16. Unlike the official
code, `use_sfr=False` does turn SFR off, and several windows can run in one call (every statistic is per window).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .postprocessing_naclip import pamr

# The official code averages the attention of these 0-based blocks of the 12-block ViT-B/16.
OFFICIAL_RCS_LAYERS: tuple[int, ...] = (5, 6, 7, 8)
OFFICIAL_DEPTH = 12
# The first pass refines its logits with PAMR inside the vision tower, whatever `pamr_steps` says.
SFR_PAMR_STEPS = 10
SFR_PAMR_DILATIONS: tuple[int, ...] = (8, 16)
# Bytes of sampled path points held at once by `sfr_connectivity` (memory only: the result does not change).
CONNECTIVITY_CHUNK_BYTES = 64 << 20


# ------------------------------------------------------------------------------------------------------ RCS
def rcs_layer_indices(depth: int) -> tuple[int, ...]:
    """0-based blocks whose attention RCS averages, for a vision tower of `depth` blocks.

    At depth 12 these are the official blocks 5, 6, 7, 8 (the 6th to 9th). Other depths keep the same span
    relative to the depth, rounded half up: blocks round(5·depth/12) … round(9·depth/12) − 1 (depth 24: 10 … 17),
    at least one block and never the last one (whose attention is the one being replaced).

    >>> rcs_layer_indices(12), rcs_layer_indices(24), rcs_layer_indices(2)
    ((5, 6, 7, 8), (10, 11, 12, 13, 14, 15, 16, 17), (0,))
    """
    if depth < 2:
        raise ValueError(f"ResCLIP needs at least two vision blocks, got {depth}.")
    first, stop = OFFICIAL_RCS_LAYERS[0], OFFICIAL_RCS_LAYERS[-1] + 1
    start = (2 * first * depth + OFFICIAL_DEPTH) // (2 * OFFICIAL_DEPTH)
    end = min((2 * stop * depth + OFFICIAL_DEPTH) // (2 * OFFICIAL_DEPTH), depth - 1)
    start = min(start, end - 1)
    return tuple(range(start, end))


def rcs_attention(attentions: Sequence[torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    """A_rcs: the mean of the attention weights [B, heads, T, T] of `layers` (CLS row and column included).

    Returns [B, heads, T, T] (float32).
    """
    return torch.stack([attentions[index].float() for index in layers]).mean(dim=0)


# ------------------------------------------------------------------------------------------------------ SFR
def sfr_patch_labels(probabilities: torch.Tensor, patch_size: int, temp_thd: float) -> torch.Tensor:
    """The label of every patch from the first pass's per-name probabilities.

    Each pixel takes its most probable *name* (first index on ties), or name 0 when that probability is below
    `temp_thd`; each `patch_size`² block of pixels (pixels beyond whole patches ignored) takes its most frequent
    label, the smallest one on ties.

    Args:
        probabilities: [B, names, H, W] softmax over names.
    Returns:
        [B, H // patch_size, W // patch_size] int64.
    """
    batch, names, height, width = probabilities.shape
    rows, cols = height // patch_size, width // patch_size
    labels = probabilities.argmax(dim=1)  # the first maximum
    labels = labels.masked_fill(probabilities.amax(dim=1) < temp_thd, 0)[:, : rows * patch_size, : cols * patch_size]
    blocks = labels.reshape(batch, rows, patch_size, cols, patch_size).transpose(2, 3)
    blocks = blocks.reshape(batch, rows * cols, patch_size * patch_size)
    counts = torch.zeros((batch, rows * cols, names), dtype=torch.long, device=labels.device)
    counts.scatter_add_(2, blocks, torch.ones_like(blocks))
    return counts.argmax(dim=2).reshape(batch, rows, cols)  # first maximum = smallest label among the most frequent


def _patch_coordinates(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """(row, column) of every patch in row-major order: [rows * cols, 2] int64."""
    index = torch.arange(rows * cols, device=device)
    return torch.stack((torch.div(index, cols, rounding_mode="floor"), index % cols), dim=-1)


def chebyshev_steps(rows: int, cols: int, device: torch.device | None = None) -> torch.Tensor:
    """steps[i, j] = max(|row_i − row_j|, |col_i − col_j|) between patches i and j (row-major): [N, N] int64."""
    coords = _patch_coordinates(rows, cols, device or torch.device("cpu"))
    return (coords[:, None] - coords[None, :]).abs().amax(dim=-1)


def _path_points(rows: int, cols: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The official path rule's geometry, the same for every window of a grid: for every ordered pair (i, j), the
    row-major index of each sampled point round(p_i · (1 − t_k) + p_j · t_k) ([N, N, T + 1] int64), and whether
    step k is examined, k <= steps(i, j) ([N, N, T + 1] bool)."""
    reach = max(rows, cols) - 1
    coords = _patch_coordinates(rows, cols, device)
    t = torch.linspace(0, 1, reach + 1, device=device)[None, None, :, None]  # [1, 1, T + 1, 1]
    points = (coords[:, None, None, :] * (1 - t) + coords[None, :, None, :] * t).round().long()  # [N, N, T + 1, 2]
    k = torch.arange(reach + 1, device=device)
    return points[..., 0] * cols + points[..., 1], k <= chebyshev_steps(rows, cols, device)[:, :, None]


def sfr_connectivity(labels: torch.Tensor) -> torch.Tensor:
    """Which ordered pairs of patches the official path rule calls connected: [..., N, N] bool for label grids
    [..., rows, cols] (N = rows · cols, row-major; each grid on its own).

    With T = max(rows, cols) − 1 (the largest distance in the grid) and t_k = `torch.linspace(0, 1, T + 1)`, the
    points of pair (i, j) are round(p_i · (1 − t_k) + p_j · t_k) (float32, in that order; round half to even).
    The pair is connected when every point with k ≤ steps(i, j) — the pair's own Chebyshev distance — has the
    label of patch i. For a pair closer than T only the part of the segment next to patch i is examined. The
    points are the same for every grid of one shape, so a batch of windows shares them.
    """
    rows, cols = labels.shape[-2:]
    flat = labels.reshape(-1, rows * cols)  # [B, N]
    count, reach = rows * cols, max(rows, cols) - 1
    index, considered = _path_points(rows, cols, labels.device)
    connected = torch.empty((len(flat), count, count), dtype=torch.bool, device=labels.device)
    chunk = max(1, CONNECTIVITY_CHUNK_BYTES // (len(flat) * count * (reach + 1) * 8))
    for first in range(0, count, chunk):
        starts = slice(first, first + chunk)
        values = flat[:, index[starts]]  # [B, S, N, T + 1]: the label at every examined point
        same = (values == flat[:, starts, None, None]) | ~considered[starts]
        connected[:, starts] = same.all(dim=-1)
    return connected.reshape(*labels.shape[:-2], count, count)


def sfr_affinity(labels: torch.Tensor, gaussian_std: float) -> torch.Tensor:
    """A_sfr for patch labels [..., rows, cols] (each window on its own): [..., 1 + N, 1 + N] (float32), zero CLS
    row and column.

    1 for patches with the same label (diagonal 1), else 0; pairs that `sfr_connectivity` does not connect are
    multiplied by exp(−steps / T) (T = max(rows, cols) − 1); each row is then blurred along the patch index by a
    1-D Gaussian of σ = `gaussian_std` (size min(N, int(6σ + 1)) made odd, zero padding), passed through ReLU and
    divided by its sum + 1e-8.
    """
    rows, cols = labels.shape[-2:]
    count, reach = rows * cols, max(rows, cols) - 1
    flat = labels.reshape(*labels.shape[:-2], count)
    affinity = (flat[..., :, None] == flat[..., None, :]).float()
    if reach > 0:
        steps = chebyshev_steps(rows, cols, labels.device)
        affinity = torch.where(sfr_connectivity(labels), affinity, affinity * torch.exp(-steps / reach))
    size = min(count, int(6 * gaussian_std + 1))
    size = size if size % 2 == 1 else size + 1
    offsets = torch.arange(size, device=labels.device) - size // 2
    kernel = torch.exp(-(offsets**2) / (2 * gaussian_std**2))
    kernel = kernel / kernel.sum()
    rows_of = affinity.reshape(-1, 1, count)
    blurred = F.relu(F.conv1d(rows_of, kernel.view(1, 1, -1), padding=size // 2)).reshape(affinity.shape)
    normalised = blurred / (blurred.sum(dim=-1, keepdim=True) + 1e-8)
    return F.pad(normalised, (1, 0, 1, 0))


def sfr_prior(affinity: torch.Tensor) -> torch.Tensor:
    """B = A_sfr / max(A_sfr) (the maximum of each window's [T, T] matrix), rounded to float16 as the official
    code does: [..., T, T] float16."""
    return (affinity / affinity.amax(dim=(-2, -1), keepdim=True)).to(torch.float16)


# ----------------------------------------------------------------------------------------------- last block
def resclip_attention(
    layer: nn.Module,
    hidden_states: torch.Tensor,
    patch_grid: tuple[int, int],
    gaussian_std: float,
    rcs: tuple[torch.Tensor, float, float] | None,
    sfr: tuple[torch.Tensor, float, float] | None,
) -> torch.Tensor:
    """The last block run the ResCLIP way (`reduced`: no residual, no MLP) on its input [B, T, D]: [B, T, D].

    Args:
        layer: CLIP's last encoder layer (`layer_norm1`, `self_attn` with `k_proj`, `v_proj`, `out_proj`,
            `scale`, `num_heads`, `head_dim`).
        hidden_states: the output of the block before, [B, T, D] with T = 1 + rows · cols.
        patch_grid: (rows, cols).
        gaussian_std: σ of Ω, in patches.
        rcs: (A_rcs [B, heads, T, T], τ_rcs, λ_rcs), or None for no RCS.
        sfr: (B [B, 1, T, T] float16 from `sfr_prior`, τ_sfr, λ_sfr), or None for no SFR.
    """
    attention = layer.self_attn
    normed = layer.layer_norm1(hidden_states)
    shape = (*normed.shape[:-1], attention.num_heads, attention.head_dim)
    key = attention.k_proj(normed).view(shape).transpose(1, 2).float()
    value = attention.v_proj(normed).view(shape).transpose(1, 2).float()
    scores = (key @ key.transpose(-1, -2)) * attention.scale
    if sfr is not None:
        prior, tau, lam = sfr
        scores = tau * ((1 - lam) * scores + lam * prior)  # λ · B in float16, as the official code
    omega = attention.neighbourhood_bias(patch_grid, gaussian_std, scores)  # NACLIP's Ω, cached per grid
    weights = torch.softmax(scores + omega, dim=-1)
    if rcs is not None:
        average, tau, lam = rcs
        weights = tau * ((1 - lam) * weights + lam * average)
    output = (weights @ value).transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)
    return attention.out_proj(output.to(hidden_states.dtype))


def first_pass_probabilities(
    model: nn.Module,
    tokens: torch.Tensor,
    pixel_values: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: float,
) -> torch.Tensor:
    """SFR's first pass, from the last block's output [B, T, D] (RCS, no SFR): per-name probabilities
    [B, names, h, w] at the window size of `pixel_values` [B, 3, h, w].

    The patch logits are upsampled bilinearly to the window, refined by PAMR (`SFR_PAMR_STEPS` steps, dilations
    `SFR_PAMR_DILATIONS`, guided by the window's normalised pixels) and turned into softmax(logit_scale · logits).
    """
    size = tuple(pixel_values.shape[-2:])
    logits = model.window_logits(tokens, text_embeds, size)
    refined = pamr(pixel_values.float(), logits, SFR_PAMR_STEPS, SFR_PAMR_DILATIONS)
    return torch.softmax(refined * logit_scale, dim=1)


def _weights(value: Any, name: str) -> tuple[float, float]:
    """(τ, λ) from a setting."""
    tau, lam = (float(item) for item in value)
    if not tau > 0 or not 0 <= lam <= 1:
        raise ValueError(f"{name}={list(value)!r} is invalid: it must be (τ, λ) with τ > 0 and 0 <= λ <= 1.")
    return tau, lam


def resclip_sfr_labels_and_prior(
    model: nn.Module,
    first_pass: torch.Tensor,
    pixel_values: torch.Tensor,
    text_embeds: torch.Tensor,
    settings: Mapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """SFR from the first pass's last-block output [B, T, D]: the patch labels [B, rows, cols] (int64) and the
    prior B [B, 1, T, T] (float16), each window on its own."""
    scale = float(settings["logit_scale"])
    probabilities = first_pass_probabilities(model, first_pass, pixel_values, text_embeds, scale)
    patch = model.config.vision_config.patch_size
    labels = sfr_patch_labels(probabilities, patch, float(settings["temp_thd"]))
    std = float(settings["gaussian_std"])
    return labels, sfr_prior(sfr_affinity(labels, std))[:, None]


def resclip_block(
    model: nn.Module,
    hidden_states: Sequence[torch.Tensor],
    attentions: Sequence[torch.Tensor],
    *,
    patch_grid: tuple[int, int],
    pixel_values: torch.Tensor,
    text_embeds: torch.Tensor,
    settings: Mapping[str, Any],
) -> torch.Tensor:
    """ResCLIP's last vision block: the patch tokens [B, rows · cols, width] of its output (CLS dropped), before
    `post_layernorm` and `visual_projection`.

    Args:
        model: a `NACLIPForSemanticSegmentation`; its last vision layer's weights are used, not its forward.
        hidden_states: as `CLIPVisionModel` returns them with `output_hidden_states=True`: index k + 1 is the output
            of block k, each [B, T, width] with T = 1 + rows · cols; the output of block depth - 2 feeds the last
            block.
        attentions: every block's attention weights [B, heads, T, T] (`output_attentions=True`, eager attention);
            the blocks of `rcs_layer_indices(depth)` are used.
        patch_grid: (rows, cols) of the windows.
        pixel_values: the windows [B, 3, h, w], normalised: the guide of the first pass's PAMR.
        text_embeds: [names, projection_dim] L2-normalised name embeddings (SFR labels are name indices).
        settings: `logit_scale`, `temp_thd`, `attn_rcs_weights` (τ, λ), `attn_sfr_weights` (τ, λ), `use_sfr`,
            `gaussian_std`.
    """
    layers = model.vision_model.encoder.layers
    rows, cols = (int(side) for side in patch_grid)
    block_input = hidden_states[len(layers) - 1]  # the output of the block before the last
    if block_input.shape[1] != 1 + rows * cols:
        raise ValueError(f"{block_input.shape[1]} tokens do not fit a {rows}×{cols} patch grid plus CLS.")
    std = float(settings["gaussian_std"])
    chosen = rcs_layer_indices(len(layers))
    if not attentions or len(attentions) <= max(chosen) or any(attentions[i] is None for i in chosen):
        raise ValueError(
            "ResCLIP needs the attention weights of the vision blocks: run the tower with output_attentions=True "
            'and eager attention (attn_implementation="eager"; SDPA returns none).'
        )
    average = rcs_attention(attentions, chosen)
    rcs = (average, *_weights(settings["attn_rcs_weights"], "attn_rcs_weights"))
    tokens = resclip_attention(layers[-1], block_input, (rows, cols), std, rcs, None)
    if settings["use_sfr"]:
        _, prior = resclip_sfr_labels_and_prior(model, tokens, pixel_values, text_embeds, settings)
        sfr = (prior, *_weights(settings["attn_sfr_weights"], "attn_sfr_weights"))
        tokens = resclip_attention(layers[-1], block_input, (rows, cols), std, rcs, sfr)
    return tokens[:, 1:]


__all__ = [
    "OFFICIAL_RCS_LAYERS", "chebyshev_steps", "first_pass_probabilities", "rcs_attention", "rcs_layer_indices",
    "resclip_attention", "resclip_block", "resclip_sfr_labels_and_prior", "sfr_affinity", "sfr_connectivity",
    "sfr_patch_labels", "sfr_prior",
]
