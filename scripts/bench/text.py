"""Section `text`: the text classifier (`encode_classes` for N names x 80 templates, tokenising included), ours
next to the baseline (`baselines.embed_names_one_by_one`: one call per name, prompts padded to 77 tokens); and our
second call, read from the on-disk cache, next to our uncached call.

The baseline makes one call of identical shape ([80, 77] tokens) per name, so its time is linear in the number of
names: it is timed on the first `--baseline-text-names` names and scaled to N (`--baseline-text-names 0` runs all).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from baselines import embed_names_one_by_one
from bench.common import Context, Row, SectionResult, Target, peak_tensor_bytes, timed
from naclip_hf.inference import encode_classes

SPEEDUP_TARGET = 12.0
CACHE_SPEEDUP_TARGET = 100.0


def run(context: Context) -> SectionResult:
    model, baseline, processor, names = context.model, context.baseline_model, context.processor, context.text_names
    with tempfile.TemporaryDirectory(prefix="naclip-text-cache-") as directory:
        cache_dir = Path(directory)
        # Warm-up and memory run of ours; it also fills the cache.
        ours_peak, filled = peak_tensor_bytes(lambda: encode_classes(model, processor, names, cache_dir=cache_dir))
        ours_s = timed(lambda: encode_classes(model, processor, names))
        cached_peak, cached = peak_tensor_bytes(lambda: encode_classes(model, processor, names, cache_dir=cache_dir))
        cached_s = min(timed(lambda: encode_classes(model, processor, names, cache_dir=cache_dir)) for _ in range(3))
    count = context.args.baseline_text_names
    sample = names if count <= 0 else names[: min(count, len(names))]
    baseline_peak, _ = peak_tensor_bytes(lambda: embed_names_one_by_one(baseline, processor.tokenizer, sample[:1]))
    start = time.perf_counter()
    reference = embed_names_one_by_one(baseline, processor.tokenizer, sample)
    baseline_s = (time.perf_counter() - start) * len(names) / len(sample)
    difference = (filled.text_embeds[: len(sample)].float() - reference.float()).abs().max().item()
    cache_difference = (cached.text_embeds.float() - filled.text_embeds.float()).abs().max().item()
    scaled = "" if len(sample) == len(names) else f"baseline timed on {len(sample)} names, scaled to {len(names)}"
    text = Row("text", f"text classifier, {len(names)} names", ours_s, ours_peak, "baseline", baseline_s,
               baseline_peak, f"max abs diff {difference:.1e}", scaled)  # fmt: skip
    cached_row = Row("text_cached", f"text classifier, {len(names)} names, 2nd call (disk cache)", cached_s,
                     cached_peak, "ours, uncached", ours_s, ours_peak,
                     f"max abs diff {cache_difference:.1e}")  # fmt: skip
    return SectionResult(
        rows=[text, cached_row],
        targets=[
            Target("text classifier vs baseline", text.speedup, SPEEDUP_TARGET),
            Target("text classifier, cached 2nd call vs uncached", cached_row.speedup, CACHE_SPEEDUP_TARGET),
        ],
        settings={"text": f"{len(names)} COCO-Stuff names x 80 templates, "
                          f"text_batch_size={model.config.text_batch_size}, shared template prefix"},
    )  # fmt: skip
