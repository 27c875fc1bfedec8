"""`naclip segment`: segment images (files, folders, URLs) into named classes; write label maps, overlays and
JSON summaries.

Everything that can be checked without the model (labels, templates, settings, inputs, output folders, the model
folder) is checked before torch is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..models.naclip.options import DEFAULT_URL_TIMEOUT
from ._common import (
    DelayedProgress,
    add_command,
    add_segmentation_options,
    check_model_source,
    number_type,
    run_options,
    settings_and_classes,
    settings_epilog,
)

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
DEFAULT_OUT_DIR = "naclip_out"
URL_PREFIXES = ("http://", "https://")
# argparse types of --alpha (opacity in [0, 1]) and --timeout (positive seconds).
_opacity = number_type(float, lambda value: 0.0 <= value <= 1.0, "{text!r} is not a number",
                       "{value} is not between 0 and 1")  # fmt: skip
_seconds = number_type(float, lambda value: value > 0, "{text!r} is not a number of seconds",
                       "{value} is not a positive number of seconds")  # fmt: skip

DESCRIPTION = (
    "Segment images into any classes named in text. For every image (a file, a folder of images, or an http(s) "
    "URL), write into --out a palette label map, an overlay of the class colours with a legend naming the classes "
    "present, and a JSON summary (see 'Outputs' below). The model is loaded once for all images. Exit status: 0 "
    "when every image was segmented, 1 when some input could not be read, downloaded, segmented or written (the "
    "others are still processed and each failure is reported on stderr), 2 for a usage or setup error (labels, "
    "settings, output folder, model), 130 when interrupted."
)
EXAMPLES = """Examples:
  naclip segment photo.jpg --labels cat "dog, puppy" grass sky
  naclip segment photos/ --labels-file labels.txt --out results/ --set short_side=448
  naclip segment https://example.com/street.png --preset cityscapes --set slide_stride=224
  naclip segment photo.jpg --labels-file labels.txt --save-scores photo.safetensors

Outputs per image in --out (stem = file name without extension, for a URL the file name of its path; repeated
stems get -2, -3, ...):
  <stem>_labels.png   palette PNG, pixel value = class id (16-bit greyscale above 256 classes)
  <stem>_overlay.png  the image blended with the class colours, legend in the top-left corner
  <stem>.json         image, size, classes, pixel share of each class present, settings, model
  <stem>.scores.safetensors  with --scores"""


@dataclass(frozen=True)
class Source:
    """One image to segment: a file path or a URL, and the stem of its outputs."""

    location: str
    is_url: bool

    @property
    def stem(self) -> str:
        if self.is_url:
            name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(self.location).path)).name
            return Path(name).stem or "image"
        return Path(self.location).stem or "image"

    def describe(self) -> str:
        return self.location

    def summary_name(self) -> str:
        return self.location if self.is_url else str(Path(self.location).resolve())


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `naclip segment` to the subparsers of `naclip`."""
    parser = add_command(subparsers, "segment", "segment images into the classes you name (label maps, overlays, "
                         "JSON summaries)", DESCRIPTION, settings_epilog() + "\n\n" + EXAMPLES)  # fmt: skip
    parser.add_argument(
        "images", nargs="*", metavar="IMAGE",
        help="image files, folders and/or http(s) URLs; a folder contributes its images (by extension: "
        f"{', '.join(IMAGE_EXTENSIONS)}), sorted by name, not recursing into subfolders",
    )  # fmt: skip
    add_segmentation_options(
        parser,
        ("use a benchmark's classes and inference settings (slide_crop, slide_stride, prob_thd, short_side)",
         ". --set overrides its settings; --labels / --labels-file replace its classes"),
        "use a method's settings (over the preset's; --set overrides them)",
        labels_help=". Put the images before --labels (or end the list with --)",
        dtype_help="; an export (--model EXPORT) runs in the precision it was exported in",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR",
        help=f"folder for the label maps, overlays and JSON summaries, created if missing (default: "
        f"./{DEFAULT_OUT_DIR}; when --save-scores is given without --out, only the scores file is written)",
    )  # fmt: skip
    parser.add_argument(
        "--alpha", type=_opacity, default=0.5, metavar="A",
        help="opacity of the class colours in the overlay, 0 to 1 (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--save-scores", type=Path, default=None, metavar="OUT.safetensors",
        help="for a single image: write its logits [names, h, w], probabilities [classes, H, W] and "
        "segmentation [H, W] to this file (see --scores for several images)",
    )  # fmt: skip
    parser.add_argument(
        "--scores", action="store_true",
        help="write <stem>.scores.safetensors (logits, probabilities, segmentation) into --out for every image",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=_seconds, default=None, metavar="SECONDS",
        help=f"seconds to wait for each URL (default: {DEFAULT_URL_TIMEOUT:g})",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true",
        help="segment every image again; by default an image whose outputs in --out are complete (its JSON "
        "summary, written last, and every file it lists, from a run with the same model, classes and settings) "
        "is skipped, so an interrupted run resumes where it stopped",
    )  # fmt: skip
    return parser


def run(args: argparse.Namespace) -> int:
    """`naclip segment`: check labels, settings, inputs, outputs and the model folder, load the model once,
    segment every image.

    Returns 0 when every image was segmented and 1 when some failed (each failure is reported on stderr as it
    happens); problems found before loading the model raise `ValueError` / `OSError`.
    """
    overrides, short_side, classes, preset = settings_and_classes(args)
    out_dir = args.out
    if out_dir is None and args.save_scores is None:
        out_dir = Path(DEFAULT_OUT_DIR)
    if args.scores and out_dir is None:
        raise ValueError("--scores writes <stem>.scores.safetensors into the output folder; pass --out DIR.")
    if not args.images:
        raise ValueError(_no_images_message(args.labels))
    sources, failures = collect_sources(args.images, out_dir)
    total = len(sources) + len(failures)
    if args.save_scores is not None and total != 1:
        raise ValueError(
            f"--save-scores {args.save_scores} writes one file but {total} images were given; pass a single "
            "image, or use --scores (with --out DIR) to write <stem>.scores.safetensors for every image."
        )
    if out_dir is not None:
        ensure_writable_dir(out_dir, "--out DIR")
    if args.save_scores is not None:
        if args.save_scores.is_dir():
            raise ValueError(f"--save-scores {args.save_scores} is a folder; give a file name (OUT.safetensors).")
        ensure_writable_dir(args.save_scores.parent, "--save-scores OUT.safetensors", "folder of the scores file")
    for source, reason in failures:
        _report_failure(source, reason)
    if not sources:
        return _finish(total, failures)
    checkpoint = check_model_source(args.model)

    from .. import scale
    from ..distributed import ProcessGroup
    from ..segmenter import load_segmenter

    group = ProcessGroup.start()  # several processes under torchrun / accelerate launch
    segmenter = load_segmenter(checkpoint, overrides, quantized=args.quantized, device=group.model_device,
                               dtype=args.dtype)  # fmt: skip
    label_set = segmenter.encode_classes(classes, cache_dir=True)
    context = _run_context(args, segmenter, label_set, preset, short_side)
    sources, stems, skipped = _left_to_do(args, out_dir, sources, context, group)
    segmented, failures = _segment_all(args, out_dir, sources, stems, segmenter, label_set, context, failures, group)
    if group.world_size > 1 or skipped:
        if group.is_main:
            print(scale.run_summary(segmented, skipped, len(failures), group.world_size), file=sys.stdout)
    if not group.is_main:
        return 1 if failures else 0
    return _finish(total, failures)


def _run_context(
    args: argparse.Namespace, segmenter: Any, label_set: Any, preset: str | None, short_side: int | None
) -> dict[str, Any]:
    """What every image's outputs record: model, dtype, preset, method, settings (with the short side used); and
    the run's options."""
    options, recorded = run_options(segmenter, short_side)
    return {"model": str(args.model), "dtype": segmenter.dtype, "preset": preset, "method": args.method,
            "settings": recorded, "classes": [names[0] for names in label_set.classes], "segmenter": segmenter,
            "options": options}


def _left_to_do(
    args: argparse.Namespace, out_dir: Path | None, sources: list[Source], context: dict[str, Any], group: Any
) -> tuple[list[Source], list[str], int]:
    """(sources, output stems, number skipped): every process checks every image before any writes, then they
    split what is left; an image is skipped when an earlier run with the same model, settings, classes and dtype
    left complete outputs (`--overwrite` redoes everything)."""
    stems = output_stems(sources)
    if out_dir is None or args.save_scores is not None or args.overwrite:
        return sources, stems, 0
    same_run = {key: context[key] for key in ("model", "settings", "classes", "dtype")}
    done = [_is_done(out_dir, stem, args.scores, same_run) for stem in stems]
    group.barrier()
    left = [(source, stem) for source, stem, finished in zip(sources, stems, done) if not finished]
    return [source for source, _ in left], [stem for _, stem in left], sum(done)


def _segment_all(
    args: argparse.Namespace, out_dir: Path | None, sources: list[Source], stems: list[str], segmenter: Any,
    label_set: Any, context: dict[str, Any], failures: list[tuple[Source, str]], group: Any,
) -> tuple[int, list[tuple[Source, str]]]:
    """Segment this process's share of `sources`; returns (images segmented by all processes, the failures of all
    processes, those found before loading first)."""
    mine = group.shard(list(zip(sources, stems)))
    description = "naclip segment" + (f" [{group.world_size} processes]" if group.world_size > 1 else "")
    progress = DelayedProgress(len(sources), description, "image", disable=len(sources) < 2 or not group.is_main)
    segmented, missing = 0, len(failures)  # inputs found missing before loading: the same on every process
    try:
        for round_index in range(group.rounds(len(sources))):
            before = len(failures)
            if round_index < len(mine):
                source, stem = mine[round_index]
                segmented += _segment_one(args, out_dir, source, stem, segmenter, label_set, context, failures,
                                          progress)  # fmt: skip
            counts = group.sum([1 if round_index < len(mine) else 0, len(failures) - before])
            progress.update(counts[0])
    finally:  # also on Ctrl-C, so that the next message starts on its own line
        progress.close()
    # Failures of every process, reported once by the main process.
    everything = group.gather([(source.describe(), reason) for source, reason in failures[missing:]])
    gathered = [(Source(where, False), reason) for part in everything for where, reason in part]
    return group.sum([segmented])[0], failures[:missing] + gathered


def _is_done(out_dir: Path, stem: str, scores: bool, same_run: dict[str, Any]) -> bool:
    """Whether an earlier run left complete outputs for `stem` with this run's model, settings, classes and dtype
    (summaries without one were written in float32)."""
    from ..scale import is_complete

    if not is_complete(out_dir, stem, expected=["scores"] if scores else []):
        return False
    try:
        summary = json.loads((out_dir / f"{stem}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    labels = [entry.get("label") for entry in summary.get("classes", []) if isinstance(entry, dict)]
    done = (summary.get("model"), summary.get("settings"), labels, summary.get("dtype", "float32"))
    return done == tuple(same_run.values())


def _segment_one(
    args: argparse.Namespace, out_dir: Path | None, source: Source, stem: str, segmenter: Any, label_set: Any,
    context: dict[str, Any], failures: list[tuple[Source, str]], progress: Any,
) -> int:
    """Read, segment and write one image; 1 when done, 0 when it failed (added to `failures` and reported)."""
    from ..models.naclip.image_io import load_image
    from ..scale import memory_problem, release_free_memory
    from ..visualization import narrow_segmentation

    try:
        image = load_image(source.location, timeout=args.timeout)
    except (OSError, ValueError) as error:
        what = "download failed" if source.is_url and isinstance(error, OSError) else "not a readable image"
        failures.append((source, f"{what} ({error})"))
        _report_failure(*failures[-1], progress)
        return 0
    keep_probabilities = args.scores or args.save_scores is not None
    problem = memory_problem(segmenter.peak_bytes(*image.shape[:2], label_set, keep_probabilities))
    if problem is not None:
        failures.append((source, f"too large for this machine: {image.shape[1]}x{image.shape[0]} pixels {problem}"))
        _report_failure(*failures[-1], progress)
        return 0
    try:
        result = segmenter.segment(image, label_set, context["options"], return_probabilities=keep_probabilities)
        segmentation = narrow_segmentation(result.segmentation, len(label_set.classes))
    except (RuntimeError, ValueError) as error:
        failures.append((source, f"segmentation failed ({error})"))
        _report_failure(*failures[-1], progress)
        return 0
    if not (args.scores or args.save_scores is not None):
        result = None  # drops the int64 label map (864 MB for 12000x9000 pixels) before the overlay is drawn
    release_free_memory()
    try:
        lines = write_outputs(args, out_dir, stem, source, image, segmentation, result, label_set, context)
    except OSError as error:
        failures.append((source, f"could not write the outputs ({error})"))
        _report_failure(*failures[-1], progress)
        return 0
    for line in lines:
        progress.write(line, file=sys.stdout)
    return 1


def _no_images_message(labels: Sequence[str] | None) -> str:
    message = "No images given; name image files, folders or URLs, e.g. naclip segment photo.jpg --labels cat dog."
    taken = [label for label in labels or [] if Path(label).exists() or label.startswith(URL_PREFIXES)]
    if taken:
        message += (
            f" {taken[0]!r} was read as a class name: put the images before --labels, or end the label list with --."
        )
    return message


def collect_sources(
    inputs: Sequence[str | os.PathLike], out_dir: Path | None
) -> tuple[list[Source], list[tuple[Source, str]]]:
    """The images named (files and URLs) or found in the named folders (sorted by name), and the inputs that
    are missing.

    In a folder only files with an image extension count; in the output folder itself the label maps and
    overlays of an earlier run are skipped. A file or URL named twice is segmented once.
    """
    sources: list[Source] = []
    failures: list[tuple[Source, str]] = []
    seen: set[str] = set()
    out_resolved = out_dir.resolve() if out_dir is not None else None
    for item in inputs:
        text = os.fspath(item)
        if text.lower().startswith(URL_PREFIXES):
            if text not in seen:
                seen.add(text)
                sources.append(Source(text, True))
            continue
        path = Path(text)
        if path.is_dir():
            found = sorted(
                (entry for entry in path.iterdir() if entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file()),
                key=lambda entry: entry.name,
            )
            if path.resolve() == out_resolved:
                found = [entry for entry in found if not entry.name.endswith(("_labels.png", "_overlay.png"))]
            if not found:
                failures.append((Source(text, False), f"folder holds no images ({', '.join(IMAGE_EXTENSIONS)})"))
        elif path.exists():
            found = [path]
        else:
            failures.append((Source(text, False), "no such file or folder"))
            continue
        for entry in found:
            key = str(entry.resolve())
            if key not in seen:
                seen.add(key)
                sources.append(Source(str(entry), False))
    return sources, failures


def ensure_writable_dir(path: Path, option: str, what: str = "output folder") -> None:
    """Create the folder if needed and check that a file can be written in it (before any model is loaded)."""
    if path.exists() and not path.is_dir():
        raise OSError(f"The {what} {path} is an existing file, not a folder; choose a folder with {option}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".naclip-write-check-", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OSError(
            f"Cannot write to the {what} {path} ({error.strerror or error}); make it writable or choose "
            f"another folder with {option}."
        ) from None


def output_stems(sources: Sequence[Source]) -> list[str]:
    """File stems for the outputs, made unique (case-insensitively) with -2, -3, ... in input order."""
    used: set[str] = set()
    stems = []
    for source in sources:
        stem = source.stem
        candidate, number = stem, 2
        while candidate.casefold() in used:
            candidate, number = f"{stem}-{number}", number + 1
        used.add(candidate.casefold())
        stems.append(candidate)
    return stems


def write_outputs(
    args: argparse.Namespace,
    out_dir: Path | None,
    stem: str,
    source: Source,
    image: Any,
    segmentation: Any,
    result: Any,
    embeddings: Any,
    context: dict[str, Any],
) -> list[str]:
    """Write the scores file and/or the label map, overlay (and scores) and JSON summary of one image, each
    atomically, the JSON summary last; return the lines to print.

    `image` [H, W, 3] uint8 and `segmentation` [H, W] (class ids, any integer dtype: the CLI passes the
    narrowest) are drawn; `result` (from `segment_image`) is read only for the scores files and may be None
    when neither --save-scores nor --scores is given. Full-size pictures are built and written one at a time,
    so that writing a 12000x9000 image's files needs about 1 GB beyond the image and its label map."""
    from ..fileio import write_atomic
    from ..visualization import class_palette, class_shares, label_map_image, overlay_image

    save_scores = context["segmenter"].save_scores

    metadata = {"classes": embeddings.classes, "image": source.describe()}
    lines = []
    if args.save_scores is not None:
        save_scores(args.save_scores, result, metadata)
        lines.append(f"Wrote {args.save_scores}")
    if out_dir is None:
        return lines
    labels = embeddings.class_labels
    palette = class_palette(len(labels))
    outputs = {"label_map": f"{stem}_labels.png", "overlay": f"{stem}_overlay.png"}
    write_atomic(out_dir / outputs["label_map"], lambda tmp: label_map_image(segmentation, palette).save(tmp, "PNG"))
    write_atomic(
        out_dir / outputs["overlay"],
        lambda tmp: overlay_image(image, segmentation, labels, palette, alpha=args.alpha).save(tmp, "PNG"),
    )
    if args.scores:
        outputs["scores"] = f"{stem}.scores.safetensors"
        save_scores(out_dir / outputs["scores"], result, metadata)
    shares = class_shares(segmentation, labels)
    height, width = segmentation.shape
    summary = {
        "image": source.summary_name(),
        "size": {"width": int(width), "height": int(height)},
        "model": context["model"],
        "dtype": context["dtype"],
        "preset": context["preset"],
        "method": context["method"],
        "classes": [{"id": index, "label": names[0], "names": names} for index, names in enumerate(embeddings.classes)],
        "class_shares": shares,
        "settings": context["settings"],
        "outputs": outputs,
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    write_atomic(out_dir / f"{stem}.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    top = ", ".join(f"{label} {share:.0%}" for label, share in list(shares.items())[:3])
    more = ", ..." if len(shares) > 3 else ""
    lines.append(f"{source.describe()} -> {out_dir / outputs['overlay']} ({top}{more})")
    return lines


def _report_failure(source: Source, reason: str, progress: Any = None) -> None:
    message = f"naclip segment: error: {source.describe()}: {reason}"
    if progress is not None:
        progress.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


def _finish(total: int, failures: Sequence[tuple[Source, str]]) -> int:
    if not failures:
        return 0
    names = ", ".join(source.describe() for source, _ in failures)
    print(f"naclip segment: {len(failures)} of {total} inputs failed: {names}", file=sys.stderr)
    return 1


__all__ = ["DEFAULT_OUT_DIR", "IMAGE_EXTENSIONS", "Source", "add_parser", "collect_sources", "run", "write_outputs"]
