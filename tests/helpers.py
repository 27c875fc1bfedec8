"""Helpers shared by the tests: tiny models built in the test, hand-computed attention, the golden cases."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
import sys
import textwrap

import torch

from naclip_hf import NACLIPConfig, NACLIPForSemanticSegmentation


def tiny_clip_config(**kwargs) -> dict:
    return dict(
        projection_dim=16,
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            "projection_dim": 16,
        },
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "vocab_size": 99,
            "max_position_embeddings": 16,
            "projection_dim": 16,
            "eos_token_id": 98,
        },
        **kwargs,
    )


def tiny_model(**settings) -> NACLIPForSemanticSegmentation:
    torch.manual_seed(0)
    return NACLIPForSemanticSegmentation(NACLIPConfig(**tiny_clip_config(**settings))).eval()


GRID = (5, 7)  # patch rows and columns of a 40×56 input with 8-pixel patches


def last_layer_projections(model, pixels):
    """q, k [B, heads, T, head_dim] of the last layer, recomputed by hand from its input (hidden_states[-2])."""
    with torch.no_grad():
        encoded = model.encode_patches(pixels, output_hidden_states=True)
        layer = model.vision_model.encoder.layers[-1]
        x = layer.layer_norm1(encoded.hidden_states[-2])
        attention = layer.self_attn
        shape = (*x.shape[:-1], attention.num_heads, attention.head_dim)
        query = attention.q_proj(x).view(shape).transpose(1, 2)
        key = attention.k_proj(x).view(shape).transpose(1, 2)
    return query, key, attention.scale


def last_attention(model, pixels, **options):
    with torch.no_grad():
        return model.encode_patches(pixels, output_attentions=True, **options).attentions[-1]


CASE_IDS = [
    "a_whole_naclip",
    "b_voc21_style",
    "c_slide_naclip",
    "c_slide_naclip_pamr",
    "c_slide_vanilla_vanilla",
    "c_slide_reduced_vanilla",
    "c_slide_reduced_kk",
    "c_slide_vanilla_csa",
    "c_slide_reduced_nonly",
    "c_slide_vanilla_naclip",
    "c_slide_naclip_std3",
    "d_odd_width_slide",
    "d_odd_width_whole",
    "e_city_style",
]


def case_settings(manifest: dict, case_id: str) -> tuple[dict, dict]:
    """(case entry, NACLIP config overrides) for a manifest case."""
    case = next(c for c in manifest["cases"] if c["id"] == case_id)
    merged = {**manifest["defaults"], **case}
    overrides = {
        "arch": merged["arch"],
        "attn_strategy": merged["attn"],
        "gaussian_std": float(merged["std"]),
        "pamr_steps": int(merged["pamr_steps"]),
        "pamr_dilations": list(merged["pamr_stride"]),
        "prob_thd": float(merged["prob_thd"]),
        "logit_scale": float(merged["logit_scale"]),
        "slide_crop": int(merged["slide_crop"]),
        "slide_stride": int(merged["slide_stride"]),
    }
    return case, overrides


# Python code to run first in a subprocess that must not import torch or transformers: importing them raises.
BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocked())
    """
)


def apply_area_threshold(probabilities: torch.Tensor, area_thd: float) -> torch.Tensor:
    """SCLIP's area threshold on whole-image class probabilities [classes, H, W], untiled: a copy with the classes
    that `area_threshold_keep` drops set to 0 (the reference for `post_process_image`'s tiled version)."""
    from naclip_hf.models.naclip.postprocessing_naclip import area_threshold_keep, drop_classes

    counts = torch.bincount(probabilities.argmax(dim=0).reshape(-1), minlength=probabilities.shape[0])
    return drop_classes(probabilities.clone(), area_threshold_keep(counts, area_thd))


# The progress bars of naclip's own commands (tqdm lines "DESCRIPTION: NN%|...").
_OWN_PROGRESS_BARS = re.compile(
    r"(naclip segment(?: \[\d+ processes\])?|naclip label \[shard \d+/\d+\]|voc21):[^\r\n]*"
)


def without_own_progress_bars(stderr: str) -> str:
    """`stderr` of a naclip command without the command's own progress bars (which appear only when the work lasts
    long enough) and blank space: what is left was printed by something else."""
    return _OWN_PROGRESS_BARS.sub("", stderr).strip()


def grid_tiles(height: int, width: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """The tiles (top, bottom, left, right) of `rows` × `cols` pixels covering `height` × `width`, row-major."""
    return [(top, min(top + rows, height), left, min(left + cols, width))
            for top in range(0, height, rows) for left in range(0, width, cols)]  # fmt: skip


@contextlib.contextmanager
def tiles_of(rows: int, cols: int):
    """Post-processing inside the block runs in tiles of `rows` × `cols` pixels (`grid_tiles`) instead of the tiles
    its memory budget gives (an image small enough for one tile is then cut into many)."""
    import pytest

    from naclip_hf.models.naclip import postprocessing_naclip

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(postprocessing_naclip, "plan_tiles", lambda height, width, *_, **__: grid_tiles(height, width,
                                                                                                       rows, cols))
        yield


def tracing_segment_one(trace: str | os.PathLike):
    """`naclip_hf.cli.segment._segment_one` that first appends `<rank>\t<input>` to the file `trace`: which process
    (`$RANK`, as torchrun sets it) read which input."""
    from naclip_hf.cli import segment

    segment_one = inspect.unwrap(segment._segment_one)  # not traced twice

    @functools.wraps(segment_one)
    def traced(args, out_dir, source, *rest):
        with open(trace, "a", encoding="utf-8") as handle:
            handle.write(f"{os.environ.get('RANK', 0)}\t{source.location}\n")
        return segment_one(args, out_dir, source, *rest)

    return traced


if __name__ == "__main__":  # `naclip ARGS` with its inputs traced to $NACLIP_TEST_TRACE (run by torchrun in tests)
    from naclip_hf.cli import main, segment

    segment._segment_one = tracing_segment_one(os.environ["NACLIP_TEST_TRACE"])
    sys.exit(main(sys.argv[1:]))
