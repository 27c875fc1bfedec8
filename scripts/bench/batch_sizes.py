"""Section `batch_sizes`: sweeps that set the defaults of `slide_batch_size` and `text_batch_size` in
`naclip_hf.models.naclip.options`. Windows: the vision pass of 16 windows in batches of 1 to 16; text:
`get_name_embeddings` (tokenising excluded) of 16 names with 64 to 2048 prompts per call. The sizes alternate
within each repeat."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from bench.common import Context, SectionResult, Table, best_times, class_names

WINDOW_BATCHES = (1, 2, 4, 8, 16)
TEXT_BATCHES = (64, 128, 256, 512, 1024, 2048)


def sweep_slide_batch_size(context: Context, sizes: Sequence[int], windows: int) -> dict[int, float]:
    """Seconds per window of the vision pass (`encode_patches` + logits) of `windows` random windows."""
    model = context.model
    crop = model.config.slide_crop or model.config.vision_config.image_size
    torch.manual_seed(0)
    pixels = torch.randn(windows, 3, crop, crop, dtype=model.dtype)
    text = F.normalize(torch.randn(12, model.config.projection_dim, dtype=model.dtype), dim=-1)

    def run(size: int) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                for start in range(0, windows, size):
                    hidden = model.encode_patches(pixels[start : start + size]).last_hidden_state
                    model.window_logits(hidden, text, (crop, crop))

        return call

    run(max(sizes))()  # warm-up
    times = best_times({str(size): run(size) for size in sizes}, context.repeats)
    return {size: times[str(size)] / windows for size in sizes}


def sweep_text_batch_size(context: Context, names: Sequence[str], sizes: Sequence[int]) -> dict[int, float]:
    """Seconds per name of `get_name_embeddings` with each `text_batch_size`."""
    model = context.model
    text = context.processor.tokenize_class_names(list(names))

    def run(size: int) -> Callable[[], None]:
        def call() -> None:
            model.get_name_embeddings(text["input_ids"], text["attention_mask"], text["num_templates"],
                                      text_batch_size=size)  # fmt: skip

        return call

    run(min(sizes))()  # warm-up
    times = best_times({str(size): run(size) for size in sizes}, context.repeats)
    return {size: times[str(size)] / len(names) for size in sizes}


def _table(title: str, unit: str, per_item: dict[int, float], default: int) -> Table:
    best = min(per_item.values())
    rows = [
        [f"{size}{' (default)' if size == default else ''}", f"{value * 1e3:.1f}", f"{value / best:.2f}"]
        for size, value in per_item.items()
    ]
    return Table(title, [title, f"ms per {unit}", "relative to the best"], rows)


def run(context: Context) -> SectionResult:
    windows = sweep_slide_batch_size(context, WINDOW_BATCHES, 16)
    names = class_names(4 if context.quick else 16)
    text = sweep_text_batch_size(context, names, TEXT_BATCHES)
    config = context.model.config
    return SectionResult(
        tables=[
            _table("Windows per batch", "window", windows, config.slide_batch_size),
            _table("Prompts per text batch", "name", text, config.text_batch_size),
        ]
    )
