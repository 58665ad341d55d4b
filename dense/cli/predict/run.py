"""What predict.py runs: the images read in batches of equal size, inference (a batch that runs out of
memory is retried image by image), the results written, and the exit status."""

from __future__ import annotations

import contextlib
import errno
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from dense.cli import runner
from dense.cli.imports import import_modules
from dense.cli.model import segmentation_classes
from dense.cli.predict.model import depth_colour_range, prepare_model
from dense.cli.predict.options import resolve_device, validate
from dense.cli.predict.outputs import (
    Journal,
    MultiLayout,
    assign_stems,
    check_output_path,
    prepare_output,
    read_record,
    run_layout,
    without_own_results,
    write_record,
)
from dense.cli.predict.writers import UINT16_MAX, describe_colours, write_results, write_run_files
from dense.core.errors import ConfigError, OnnxRunError
from dense.core.io import INPUT_SUFFIXES, ImageReadError, announcing_writes, list_images, read_image
from dense.data.transforms import eval_view, image_tensor
from dense.model import DenseModel
from dense.multi_head import MultiHeadModel
from dense.tools.export import OnnxDenseModel

EXIT_SKIPPED = 3


def main(cfg: DictConfig) -> None:
    """predict.py's Hydra main: predict() with one-line errors, exiting with its status."""
    status = runner.run(predict, cfg)
    if status:
        sys.exit(status)


def skip(path: Path, reason: str, skipped: list[str], progress: tqdm) -> None:
    """Report a file that gets no results, now (above the progress bar) and in the final summary."""
    skipped.append(path.name)
    progress.write(f"skipped {reason}", file=sys.stderr)


def view_too_large(path: Path, image: np.ndarray, cfg: DictConfig) -> str | None:
    """Why the largest resized view of `image` (scales) is refused, before it is allocated; None if it fits."""
    scale = max(float(s) for s in cfg.scales)
    # The size DenseModel.predict resizes to (segmentation's eval_view_size is at most as large).
    height, width = (max(1, round(side * scale)) for side in image.shape[:2])
    if height * width <= cfg.max_pixels:
        return None
    return (
        f"{path}: at scale {scale:g} it becomes {width}×{height} = {height * width:,} pixels, more than the "
        f"{cfg.max_pixels:,} allowed (max_pixels={cfg.max_pixels}); use smaller scales, or raise max_pixels"
    )


def batches(
    paths: list[Path], stems: list[str], cfg: DictConfig, skipped: list[str], progress: tqdm
) -> Iterator[list[tuple[Path, str, np.ndarray]]]:
    """Runs of consecutive images of equal size, at most batch_size long, as [(path, stem, uint8
    H×W×3)]. Images are read lazily (a folder never sits in memory); unreadable ones, and those above
    the pixel budget (max_pixels, also for their resized views), are skipped."""
    batch_size = int(cfg.batch_size)
    batch: list[tuple[Path, str, np.ndarray]] = []
    for path, stem in zip(paths, stems):
        try:
            image = read_image(path, max_pixels=cfg.max_pixels)
            reason = view_too_large(path, image, cfg)
        except ImageReadError as e:
            reason = str(e)
        if reason is not None:
            skip(path, reason, skipped, progress)
            progress.update(1)
            continue
        if batch and (len(batch) == batch_size or batch[0][2].shape != image.shape):
            yield batch
            batch = []
        batch.append((path, stem, image))
    if batch:
        yield batch


def infer(
    model: DenseModel, images: list[np.ndarray], cfg: DictConfig, device: torch.device
) -> tuple[list[np.ndarray], list[bool]]:
    """Per image: depth H×W float32 metres or class ids H×W int64, and whether the prediction was
    finite (an argmax over NaN would look like a class map).

    Segmentation is predicted as the evaluation predicts it (SegmentationTask): each scale's view is
    rescaled from the uint8 image with mmseg's size rule, at the image's own size (the evaluation's
    eval_short_side=null), one view at a time."""
    if isinstance(model, MultiHeadModel):
        return infer_multi(model, images, cfg, device)
    bf16 = cfg.precision == "bf16"
    window_options = {
        "crop_size": runner.plain(cfg.crop_size),  # an int or [h, w]
        "stride": runner.plain(cfg.stride),
        "flip": bool(cfg.flip),
    }
    scales = [float(s) for s in cfg.scales]
    # An ONNX file's runs are stopped past onnx_time_limit seconds per image (all views together).
    budget = model.time_budget(len(images)) if isinstance(model, OnnxDenseModel) else contextlib.nullcontext()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), budget:
        if model.task == "segmentation":
            views = (torch.cat([eval_view(image, s, None) for image in images]).to(device) for s in scales)
            out = model.predict_views(views, images[0].shape[:2], cfg.mode, **window_options)
        else:
            x = torch.stack([image_tensor(image) for image in images]).to(
                device
            )  # uint8: the model normalises
            out = model.predict(x, cfg.mode, scales=scales, **window_options)
    out = out.float()
    finite = torch.isfinite(out).flatten(1).all(dim=1).tolist()
    maps = out[:, 0] if model.task == "depth" else out.argmax(dim=1)
    return list(maps.cpu().numpy()), finite


def infer_multi(
    model: MultiHeadModel, images: list[np.ndarray], cfg: DictConfig, device: torch.device
) -> tuple[list[dict[str, np.ndarray]], list[bool]]:
    """infer() for every head: per image {head: its map}, and whether all were finite. The whole image
    at scale 1 without flip is one backbone pass for all heads; other settings (slide, scales, flip)
    predict head by head, each exactly as its single-head model would."""
    if cfg.mode == "whole" and [float(s) for s in cfg.scales] == [1.0] and not cfg.flip:
        x = torch.stack([image_tensor(image) for image in images]).to(device)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"),
        ):
            out = model(x)
        maps, finite = {}, [True] * len(images)
        for name, value in out.items():
            value = value.float()
            finite = [a and b for a, b in zip(finite, torch.isfinite(value).flatten(1).all(dim=1).tolist())]
            task = model.parts[name].task
            maps[name] = list((value[:, 0] if task == "depth" else value.argmax(dim=1)).cpu().numpy())
    else:
        maps, finite = {}, [True] * len(images)
        for name, part in model.parts.items():
            maps[name], ok = infer(part, images, cfg, device)
            finite = [a and b for a, b in zip(finite, ok)]
    return [{name: maps[name][i] for name in maps} for i in range(len(images))], finite


def out_of_memory(error: BaseException) -> bool:
    """Accelerator memory (torch.OutOfMemoryError; MPS: "out of memory"), the CPU allocator's RuntimeError
    ("can't allocate memory") or numpy's MemoryError."""
    text = str(error)
    return (
        isinstance(error, torch.OutOfMemoryError | MemoryError)
        or "out of memory" in text
        or "can't allocate memory" in text
    )


def infer_or_skip(model, batch, cfg, device, skipped, progress) -> list[np.ndarray | None]:
    """infer(), retrying a batch that runs out of memory (accelerator or CPU) one image at a time; an
    image that does not fit even alone, or whose prediction holds NaN or inf, is reported and skipped
    (None) so the rest of the folder still runs."""
    try:
        maps, finite = infer(model, [image for _, _, image in batch], cfg, device)
    except (RuntimeError, MemoryError) as error:
        # An ONNX file's run that failed, ran too long or gave an output unlike its metadata: that image.
        onnx_failure = isinstance(error, OnnxRunError)
        if not out_of_memory(error) and not onnx_failure:
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if len(batch) > 1:
            return [r for item in batch for r in infer_or_skip(model, [item], cfg, device, skipped, progress)]
        path, _, image = batch[0]
        hint = "smaller scales" if device.type == "cpu" else "precision=bf16 or device=cpu"
        reason = f"{path}: out of memory on {device} at {image.shape[1]}×{image.shape[0]}; try mode=slide crop_size=518 or {hint}"
        skip(path, f"{path}: {error}" if onnx_failure else reason, skipped, progress)
        return [None]
    for (path, _, _), ok in zip(batch, finite):
        if not ok:
            reason = (
                f"{path}: the prediction holds NaN or inf, so nothing was written for it; the model's weights "
                "may hold NaN (check the checkpoint), or bf16 overflowed (try precision=fp32)"
            )
            skip(path, reason, skipped, progress)
    return [result if ok else None for result, ok in zip(maps, finite)]


def predict(cfg: DictConfig) -> int:
    """Everything predict.py does; returns the exit status (0, or EXIT_SKIPPED). Set-up mistakes exit
    with status 2 and one line (dense.cli.runner), before any image is processed."""
    with runner.setup_errors():
        import_modules(cfg.get("imports"))  # the user's own registered heads, backbones, datasets
        validate(cfg)
        output = Path(cfg.output).expanduser()
        paths = list_images(cfg.input)
        check_output_path(output)
        ours = read_record(output) if output.is_dir() else set()
        paths = without_own_results(paths, cfg.input, output, ours)
        if not paths:
            raise ConfigError(f"input folder {cfg.input} holds no image files ({' '.join(INPUT_SUFFIXES)})")
        device = resolve_device(cfg.device)
        model, stored_names = prepare_model(cfg, device)
        relative = getattr(model, "depth_mode", "metric") == "relative"
        if relative and cfg.depth_range not in ("model", "auto"):
            raise ConfigError("depth_range is in metres, but this model predicts relative depth (no unit)")
        if isinstance(model, MultiHeadModel) and any(
            p.depth_mode == "relative" for p in model.parts.values()
        ):
            if cfg.depth_range not in ("model", "auto"):
                raise ConfigError(
                    "depth_range is in metres, but this model's depth head predicts relative depth"
                )
        existing = prepare_output(output)  # only once the model is there: a refused checkpoint leaves nothing
        if isinstance(model, MultiHeadModel):
            layout, palette, classes, colours = multi_settings(model, cfg, stored_names)
        else:
            layout = run_layout(cfg, model.task, relative)
            palette = classes = None
            if model.task == "segmentation":
                classes, palette, source = segmentation_classes(model, stored_names, cfg.palette)
                print(source)
            colours = depth_colour_range(cfg, model) if model.task == "depth" else None
        stems, notes, run_names = assign_stems(paths, output, existing, ours, layout)
        # Written first (it keeps the earlier results' identities), so that a folder that cannot take it
        # fails here, before any work; the files of this run are recorded as they are written (finally).
        try:
            write_record(output, ours)
        except OSError as error:
            raise ConfigError(
                f"cannot write {error.filename or output} ({error.strerror or error}); nothing was predicted"
            ) from None

    for note in notes:
        print(note, file=sys.stderr)
    if model.task == "depth" and not relative and model.max_depth * cfg.depth_scale > UINT16_MAX:
        print(
            f"note: depths above {UINT16_MAX / cfg.depth_scale:g} m are clipped in the 16-bit PNGs (the model "
            f"reaches {model.max_depth:g} m; the .npy files keep them); depth_scale=256 fits up to 256 m",
            file=sys.stderr,
        )
    skipped: list[str] = []
    written = 0
    kept: set[str] = set()  # the files written in this run
    stopped = None
    journal = Journal(output)  # each result is in it before it appears: a killed run loses none
    try:
        with (
            announcing_writes(journal),
            tqdm(total=len(paths), unit="image", disable=not cfg.progress, file=sys.stderr) as progress,
        ):
            for batch in batches(paths, stems, cfg, skipped, progress):
                results = infer_or_skip(model, batch, cfg, device, skipped, progress)
                for (path, stem, image), result in zip(batch, results):
                    if result is None:
                        continue
                    try:
                        if not kept and isinstance(layout, MultiLayout):
                            for name, _ in layout.parts:
                                own = {
                                    k.removeprefix(f"{name}_"): v
                                    for k, v in run_names.items()
                                    if k.startswith(f"{name}_")
                                }
                                write_run_files(output, own, cfg, colours[name], palette[name], classes[name])
                        elif not kept:  # with the first results: the files that tell how to read them
                            write_run_files(output, run_names, cfg, colours, palette, classes)
                            kept.update(run_names.values())
                        kept.update(write_results(output, stem, image, result, layout, palette, cfg, colours))
                    except OSError as error:
                        if error.errno == errno.ENAMETOOLONG:  # this image's names, not the disk
                            reason = f"{path}: its result file names are too long for the disk; rename it"
                            skip(path, reason, skipped, progress)
                            continue
                        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
                        stopped = (
                            f"stopped: cannot write the results of {path} in {output} ({error.strerror or error}); "
                            f"{'free some space' if full else 'fix that'}, then rerun over the folder"
                        )
                        break
                    written += 1
                progress.update(len(batch))
                if stopped:
                    break
    finally:
        journal.close()
        # What is really there now (an image whose writing failed left nothing).
        with contextlib.suppress(OSError):
            write_record(output, ours | kept)

    if stopped:
        print(stopped, file=sys.stderr)
    if isinstance(model, MultiHeadModel):
        print(
            f"wrote the results of heads {', '.join(model.names)} for {written} of {len(paths)} images to {output}"
        )
        for name, part in model.parts.items():
            own = {k.removeprefix(f"{name}_"): v for k, v in run_names.items() if k.startswith(f"{name}_")}
            text = describe_colours(cfg, part, output, own, colours[name], part.depth_mode == "relative")
            print(f"head {name} (files <stem>_{name}*): {text}")
    else:
        kind = "relative depth" if relative else model.task
        print(f"wrote {kind} results for {written} of {len(paths)} images to {output}")
        print(describe_colours(cfg, model, output, run_names, colours, relative))
    if skipped:
        print(f"skipped {len(skipped)} image(s), see above: {', '.join(skipped)}", file=sys.stderr)
    return EXIT_SKIPPED if skipped or stopped else 0


def multi_settings(model: MultiHeadModel, cfg: DictConfig, stored_names: dict) -> tuple:
    """The layout, and per head the palette, class names and depth colour range, of a multi-head run."""
    parts = model.parts
    layout = MultiLayout(
        tuple((n, run_layout(cfg, p.task, p.depth_mode == "relative")) for n, p in parts.items())
    )
    segmentation = {n for n, p in parts.items() if p.task == "segmentation"}
    palette, classes = dict.fromkeys(parts), dict.fromkeys(parts)
    for n in segmentation:
        classes[n], palette[n], source = segmentation_classes(parts[n], stored_names[n], cfg.palette)
        print(f"head {n}: {source}")
    colours = {n: depth_colour_range(cfg, p) if p.task == "depth" else None for n, p in parts.items()}
    return layout, palette, classes, colours
