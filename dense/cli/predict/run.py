"""Depth or segmentation maps for an image or a folder of images.

    python predict.py ckpt=RUN/checkpoints/best.ckpt input=photos/ output=results/     # a train.py checkpoint
    python predict.py backbone=vitl14 head=depth_dpt backbone.weights=B.pth head.weights=H.pth input=room.jpg output=results/
    python predict.py ckpt=... input=... output=... depth_range=[0,5] cmap=turbo      # colours over 0-5 m in every image
    python predict.py ckpt=... input=... output=... mode=slide crop_size=518 precision=bf16
    python predict.py model=model.onnx input=photos/ output=results/                  # a file from export.py
    python predict.py ckpt=MULTI/checkpoints/best.ckpt input=photos/ output=results/  # head=multi: every head, one pass

Depth: <stem>_color.png, the depth in colours with its colour bar beside it (each image's own nearest to
farthest depth, or depth_range), <stem>_depth_mm.png (16-bit millimetres, for programs; depth_scale=256:
<stem>_depth_x256.png) and <stem>.npy (float32 metres).
Relative depth (a model trained with task.depth_mode=relative: disparity up to scale and shift):
<stem>_relative.png (16-bit, normalised per image for viewing: 0 = farthest, 65535 = nearest),
<stem>_color.png in the same per-image range, no colour bar (no unit), <stem>.npy the raw output.
Segmentation: <stem>.png (class ids), <stem>_color.png, <stem>_overlay.png, and legend.png + classes.json
(the class colours and names). A multi-head model (train.py head=multi) writes each head's files from
one backbone pass, named <stem>_<head>*: room_depth_color.png, room_depth_depth_mm.png, room_seg.png, ...,
and seg_legend.png, seg_classes.json. A rerun over the same folder replaces only files predict.py wrote there.

Exit status: 0 when every image was written; 2 when nothing could run (a bad option, a missing input
or checkpoint, an output folder that cannot be written: one line on stderr says which); 3 when some
images were skipped (each is named with its reason, the others are written) or writing failed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dense import _cli

if __name__ == "__main__":  # --help and argument mistakes before the imports below (seconds of start-up)
    _cli.check_arguments(__file__)

import hydra  # noqa: E402
import matplotlib
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from dense import viz
from dense.backbone import check_official_weights, get_spec
from dense.checkpoint import model_from_checkpoint, read_model_config
from dense.config import apply_speed_options, compile_mode, model_from_config
from dense.data import ADE20K_CLASSES, VOC_CLASSES
from dense.data.transforms import eval_view, image_tensor
from dense.export import OnnxDenseModel, OnnxRunError, onnx_model_for_predict
from dense.imports import import_modules
from dense.io import (
    INPUT_SUFFIXES,
    ImageReadError,
    announcing_writes,
    atomic_path,
    list_images,
    read_image,
    save_npy,
    save_png,
)
from dense.model import DenseModel, check_inference_settings
from dense.multi_head import MultiHeadModel

EXIT_SKIPPED = 3
UINT16_MAX = 65535
from dense.errors import ConfigError  # noqa: E402  (ConfigError under the name predict.py uses)

# The output folder's record of the result files predict.py wrote in it: a hidden JSON file of plain
# file names. A rerun may replace exactly these; every other file there is the user's.
RECORD = ".dense-predict.json"
RECORD_FORMAT = "dense predict.py results v2"
RECORD_MAX_BYTES = 64 * 2**20  # a million names; anything larger is not a record of ours
RESULT_SUFFIXES = (".png", ".npy", ".json")
# Kept current while a run writes: one JSON line per result file (its name and identity), appended just
# before the file appears under its name (dense.io.announcing_writes). Folded into the record when a
# run starts and ends; a run killed in between (SIGKILL, power loss) leaves it, so the rerun still
# knows every file it wrote.
JOURNAL = ".dense-predict.journal"


# --------------------------------------------------------------------------- set-up


def check_options(cfg: DictConfig) -> None:
    if cfg.input is None:
        raise ConfigError("input is not set: python predict.py ckpt=PATH input=IMAGE_OR_FOLDER output=DIR")
    if cfg.output is None:
        raise ConfigError("output is not set: python predict.py ckpt=PATH input=IMAGE_OR_FOLDER output=DIR")
    try:
        check_inference_settings(
            cfg.mode, *(_cli.plain(cfg[k]) for k in ("crop_size", "stride", "scales", "flip"))
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if cfg.precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision={cfg.precision} is not one of fp32, bf16")
    compile_mode(cfg.compile)
    if not cfg.depth_scale or cfg.depth_scale <= 0:
        raise ConfigError(f"depth_scale={cfg.depth_scale} must be positive (1000: millimetres)")
    if int(cfg.batch_size) < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} must be at least 1")
    if cfg.palette not in viz.PALETTES:
        raise ConfigError(f"palette={cfg.palette} is not one of {', '.join(viz.PALETTES)}")
    if not 0.0 <= float(cfg.alpha) <= 1.0:
        raise ConfigError(f"alpha={cfg.alpha} must be between 0 and 1")
    if cfg.cmap not in matplotlib.colormaps:
        raise ConfigError(f"cmap={cfg.cmap} is not a matplotlib colour map (e.g. magma_r, turbo, viridis)")
    depth_range = _cli.plain(cfg.depth_range)
    if depth_range not in ("model", "auto") and not (
        isinstance(depth_range, list)
        and len(depth_range) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in depth_range)
        and 0 <= depth_range[0] < depth_range[1]
    ):
        raise ConfigError(
            f"depth_range={depth_range} must be model (the model's depth range), auto (each image's own "
            "range) or [min,max] in metres with 0 <= min < max"
        )
    max_pixels = cfg.max_pixels
    if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1:
        raise ConfigError(
            f"max_pixels={max_pixels} must be a positive number of pixels (default 64000000: 8000×8000)"
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name} is not a device name (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name} but MPS is not available here; use device=cpu")
    return device


def build(cfg: DictConfig) -> tuple[DenseModel, list[str] | None]:
    """From a train.py checkpoint (ckpt=) or from the backbone/head groups (Meta's released heads); with
    the class names a checkpoint stores (None: none stored)."""
    if cfg.ckpt is not None:
        if cfg.head.get("weights"):
            raise ConfigError(
                "give either ckpt=PATH (train.py) or head.weights=PATH (a released head), not both"
            )
        if not os.path.isfile(cfg.ckpt):
            raise ConfigError(f"checkpoint not found: {cfg.ckpt}")
        checkpoint, _ = read_model_config(cfg.ckpt)
        model = model_from_checkpoint(checkpoint, cfg.ckpt, backbone_weights=cfg.backbone.get("weights"))
        if isinstance(model, MultiHeadModel):
            return model, {name: stored_class_names(checkpoint, name) for name in model.names}
        return model, stored_class_names(checkpoint)
    if not cfg.head.get("weights"):
        # A head without weights is random: its maps would look like results and mean nothing.
        raise ConfigError(
            "no trained head: give ckpt=PATH (a train.py checkpoint) or head.weights=PATH (one of Meta's "
            "released heads, with backbone=... and backbone.weights=PATH)"
        )
    if not os.path.isfile(cfg.head.weights):
        raise ConfigError(f"head weights not found: {cfg.head.weights}")
    if cfg.backbone.get("weights") and not os.path.isfile(cfg.backbone.weights):
        raise ConfigError(f"backbone weights not found: {cfg.backbone.weights}")
    if cfg.backbone.get("pretrained") and not cfg.backbone.get("weights"):
        check_official_weights(get_spec(cfg.backbone.name))  # in a second, before the backbone is built
    return model_from_config(cfg.backbone, cfg.head).eval(), None


def stored_class_names(checkpoint: dict, head: str | None = None) -> list[str] | None:
    """The class names train.py stored with a segmentation checkpoint (hyper_parameters.metrics; of a
    multi-head checkpoint, hyper_parameters.heads.<head>.metrics), when they are what it writes: a list
    of short strings. The checkpoint is data: anything else is ignored."""
    stored = checkpoint.get("hyper_parameters") or {}
    if head is not None:
        entries = stored.get("heads") if isinstance(stored, dict) else None
        stored = entries.get(head) if isinstance(entries, dict) else None
    metrics = stored.get("metrics") if isinstance(stored, dict) else None
    names = metrics.get("class_names") if isinstance(metrics, dict) else None
    if isinstance(names, list) and names and all(isinstance(n, str) and len(n) <= 200 for n in names):
        return names
    return None


def class_names(model: DenseModel, stored: list[str] | None) -> list[str]:
    """The names of the model's classes: the checkpoint's, else ADE20K's for 150 classes and VOC's for 21
    (as palette=auto), else "class N"."""
    count = num_classes(model)
    if stored is not None and len(stored) == count:
        return stored
    known = {len(ADE20K_CLASSES): ADE20K_CLASSES, len(VOC_CLASSES): VOC_CLASSES}.get(count)
    return list(known) if known else [f"class {i}" for i in range(count)]


def depth_colour_range(cfg: DictConfig, model: DenseModel) -> tuple[float, float] | None:
    """The depth range of the colours of every image (None: each image's own, depth_range=auto)."""
    if cfg.depth_range == "auto":
        return None
    if cfg.depth_range == "model":
        return float(model.min_depth), float(model.max_depth)
    return float(cfg.depth_range[0]), float(cfg.depth_range[1])


def check_output_path(output: Path) -> None:
    """An output folder that cannot be one (a file, or under a file), refused before anything is built."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output={output} is a file, not a folder; choose a folder for the results")
    under = next((parent for parent in output.parents if parent.exists() and not parent.is_dir()), None)
    if under is not None:
        raise ConfigError(
            f"output={output} lies under {under}, which is a file; choose a folder for the results"
        )


def prepare_output(output: Path) -> list[str]:
    """Create the output folder and make sure files can be created in it, before any image is read;
    returns the names of what it holds."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".tmp-", dir=output)
        os.close(handle)
        os.remove(probe)
        return os.listdir(output)
    except OSError as error:
        raise ConfigError(
            f"cannot write in the output folder {output} ({error.strerror or error}); make it writable or "
            "choose another output"
        ) from None


def is_plain_file(path: Path) -> bool:
    """A regular file, not a link (never followed) or a folder."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def is_result_name(name) -> bool:
    """A name predict.py may have written: a plain .png/.npy file name, no folder part, not hidden."""
    return (
        isinstance(name, str)
        and name == os.path.basename(name)
        and "\\" not in name
        and "\0" not in name
        and not name.startswith(".")
        and name.endswith(RESULT_SUFFIXES)
    )


def file_identity(path: Path) -> list[int] | None:
    """What a rewrite or replacement of a plain file changes: size, mtime, inode. None: not a plain file."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns, info.st_ino] if stat.S_ISREG(info.st_mode) else None


def read_record(output: Path) -> set[str]:
    """The files of the output folder that predict.py wrote on earlier runs (its record there, and the
    journal of a run that was killed) and that are still exactly as it left them (same size, mtime and
    inode: a file someone rewrote or put there under that name is theirs). Record and journal are data
    anyone could have prepared: only plain result file names in this folder are taken from them; nothing
    they name elsewhere is looked at."""
    entries, ignored = {}, 0
    record = read_own_file(output / RECORD)
    if record is not None:
        data = parse_json(record, output / RECORD)
        if not (
            isinstance(data, dict)
            and data.get("format") == RECORD_FORMAT
            and isinstance(data.get("files"), dict)
        ):
            raise not_our_record(
                output / RECORD, f'does not hold {{"format": "{RECORD_FORMAT}", "files": {{name: identity}}}}'
            )
        entries.update(data["files"])
    journal = read_own_file(output / JOURNAL)
    for line in (journal or b"").splitlines():
        try:
            entry = json.loads(line)
            entries[entry["name"]] = entry["identity"]
        except (ValueError, RecursionError, TypeError, KeyError):
            ignored += 1  # e.g. the last line, cut short by the kill
    ours = {name: identity for name, identity in entries.items() if is_result_name(name)}
    ignored += len(entries) - len(ours)
    if ignored:
        print(
            f"note: {output / RECORD}: ignored {ignored} entries that are not plain result file names "
            f"({' '.join(RESULT_SUFFIXES)} files in that folder)",
            file=sys.stderr,
        )
    return {name for name, identity in ours.items() if identity == file_identity(output / name)}


def not_our_record(path: Path, reason: str) -> ConfigError:
    return ConfigError(
        f"{path} {reason}, so it is not predict.py's record of the results it wrote there; move it "
        "away or choose another output folder"
    )


def read_own_file(path: Path) -> bytes | None:
    """The bytes of predict.py's record or journal (None: there is none), only from a plain file of at
    most RECORD_MAX_BYTES."""
    if not os.path.lexists(path):
        return None
    if not is_plain_file(path):
        raise not_our_record(path, "is not a plain file")
    if os.path.getsize(path) > RECORD_MAX_BYTES:
        raise not_our_record(path, f"is larger than {RECORD_MAX_BYTES} bytes")
    try:
        return path.read_bytes()
    except OSError as error:
        raise not_our_record(path, f"cannot be read ({error.strerror or error})") from None


def parse_json(data: bytes, path: Path):
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        raise not_our_record(path, f"cannot be read as JSON ({' '.join(str(error).split())[:120]})") from None


def write_record(output: Path, names: set[str]) -> None:
    """Record `names` as predict.py's files in `output`, each with its identity now (atomically); names
    that are not plain files there are left out; none left: no record. The journal, now folded in, is
    removed."""
    path = output / RECORD
    files = {
        name: identity for name in sorted(names) if (identity := file_identity(output / name)) is not None
    }
    if not files:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    else:
        record = {
            "format": RECORD_FORMAT,
            "about": "the result files predict.py wrote in this folder, with [size, mtime_ns, inode] as it left "
            "them: a rerun may replace these, and only while they are unchanged",
            "files": files,
        }
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(record, indent=1) + "\n")
    with contextlib.suppress(FileNotFoundError):
        os.remove(output / JOURNAL)


class Journal:
    """The run's journal in `output` (JOURNAL), told by dense.io.announcing_writes of every file about to
    appear: a file of the output folder gets a line with its name and identity, in one append."""

    def __init__(self, output: Path):
        self.folder = os.path.realpath(output)
        self.fd: int | None = None

    def __call__(self, path: str, tmp: str) -> None:
        if os.path.realpath(os.path.dirname(os.path.abspath(path))) != self.folder:
            return
        if self.fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            self.fd = os.open(os.path.join(self.folder, JOURNAL), flags, 0o666)
        line = json.dumps({"name": os.path.basename(path), "identity": file_identity(Path(tmp))})
        os.write(self.fd, (line + "\n").encode())

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def without_own_results(paths: list[Path], source: str, output: Path, ours: set[str]) -> list[Path]:
    """The images of list_images(source) but predict.py's own results, when the input folder is the
    output folder (a rerun over the folder does not predict its earlier results)."""
    folder = Path(source).expanduser()
    if not ours or not folder.is_dir() or folder.resolve() != output.resolve():
        return paths
    inputs = [path for path in paths if path.name not in ours]
    if len(inputs) < len(paths):
        print(
            f"note: {len(paths) - len(inputs)} image files in {folder} are predict.py's own results (listed in "
            f"{RECORD}) and are not read as inputs",
            file=sys.stderr,
        )
    return inputs


def depth_png_suffix(depth_scale: float) -> str:
    """What the 16-bit depth file is called after its stem: its unit (millimetres by default), since
    a 16-bit PNG of depths looks black in any image viewer and must not pass for a picture."""
    return "_depth_mm.png" if float(depth_scale) == 1000 else f"_depth_x{float(depth_scale):g}.png"


# A relative model's 16-bit map: normalised per image, no unit (write_relative_depth).
RELATIVE_SUFFIX = "_relative.png"


@dataclass(frozen=True)
class Layout:
    """The files of a run: per image (names(stem)) and once per run (run_files: the segmentation legend
    and class names)."""

    task: str
    save_npy: bool = True
    depth_suffix: str = "_depth_mm.png"  # depth_png_suffix(depth_scale)
    run_files: tuple[str, ...] = ()
    relative: bool = False  # a relative-depth model: maps normalised per image, no colour bar

    def names(self, stem: str) -> list[str]:
        if self.task == "depth" and self.relative:
            npy = [f"{stem}.npy"] if self.save_npy else []
            return [f"{stem}_color.png", f"{stem}{RELATIVE_SUFFIX}", *npy]
        if self.task == "depth":
            npy = [f"{stem}.npy"] if self.save_npy else []
            return [f"{stem}_color.png", f"{stem}{self.depth_suffix}", *npy]
        return [f"{stem}.png", f"{stem}_color.png", f"{stem}_overlay.png"]


@dataclass(frozen=True)
class MultiLayout:
    """The files of a multi-head run: each head's Layout under the stem <stem>_<head> (run files
    <head>_legend.png, <head>_classes.json), all from one backbone pass per image."""

    parts: tuple[tuple[str, Layout], ...]
    task: str = "multi"

    @property
    def run_files(self) -> tuple[str, ...]:
        return tuple(f"{name}_{file}" for name, layout in self.parts for file in layout.run_files)

    def names(self, stem: str) -> list[str]:
        return [file for name, layout in self.parts for file in layout.names(f"{stem}_{name}")]


def run_layout(cfg: DictConfig, task: str, relative: bool = False) -> Layout:
    if relative:
        return Layout(task, bool(cfg.save_npy), relative=True)
    if task == "depth":
        return Layout(task, bool(cfg.save_npy), depth_png_suffix(cfg.depth_scale))
    return Layout(task, run_files=("legend.png", "classes.json"))


def assign_stems(
    paths: list[Path], output: Path, existing: list[str], ours: set[str], layout: Layout
) -> tuple[list[str], list[str], dict[str, str]]:
    """Each input's output stem, a note for each input whose stem is not its file's stem, and the name
    each of the run's own files (layout.run_files) gets.

    The run's files come first: NAME.EXT, or the first free NAME_1.EXT, NAME_2.EXT, … Then the documented
    rule for the inputs: the file's stem, or its full name (a.jpg → a_jpg) when inputs share a
    stem. Then, in input order, the first of NAME, NAME_1, NAME_2, … none of whose files (layout.names)
    is a file of the run, an earlier input's result, an input image, or a file in the output folder that
    predict.py did not write (anything `existing` there but `ours`). Names are compared regardless of
    case, so the result is the same on disks that ignore it (macOS, Windows).
    """
    key = str.casefold
    taken: dict[str, str] = {}  # casefolded file name → why it may not be written
    for name in existing:
        if name not in ours:
            taken[key(name)] = f"{name} in {output} was not written by predict.py"
    here = output.resolve()
    for path in paths:
        if path.resolve().parent == here:
            taken[key(path.resolve().name)] = f"{path.resolve().name} is an input image"
    run_names = {}
    for name in layout.run_files:
        base, suffix = os.path.splitext(name)
        free, n = name, 0
        while key(free) in taken:
            n += 1
            free = f"{base}_{n}{suffix}"
        taken[key(free)] = f"{free} is a file of this run"
        run_names[name] = free
    stem_count = Counter(key(path.stem) for path in paths)
    stems, notes = [], []
    for path in paths:
        base = path.name.replace(".", "_") if stem_count[key(path.stem)] > 1 else path.stem
        stem, reason, n = base, None, 0
        while clash := next((taken[key(f)] for f in layout.names(stem) if key(f) in taken), None):
            reason = reason or clash
            n += 1
            stem = f"{base}_{n}"
        for name in layout.names(stem):
            taken[key(name)] = f"{name} is {path.name}'s result"
        stems.append(stem)
        if stem != path.stem:
            why = reason or f"another input has the stem {path.stem}"
            notes.append(f"note: the results of {path.name} are named {stem}.* ({why})")
    return stems, notes, run_names


def num_classes(model: DenseModel) -> int:
    # DenseModel.num_classes reads the head's attribute, which the linear heads do not set; the
    # build_model config always records it.
    return int(model.num_classes or model.config["num_classes"])


# --------------------------------------------------------------------------- reading and inference


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
        "crop_size": _cli.plain(cfg.crop_size),  # an int or [h, w]
        "stride": _cli.plain(cfg.stride),
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


# --------------------------------------------------------------------------- writing


def write_depth(
    output: Path, stem: str, depth: np.ndarray, cfg: DictConfig, colours, relative: bool = False
) -> None:
    """colours: the fixed (min, max) of the colour map, or None for this image's own range. relative:
    `depth` is a disparity up to scale and shift (write_relative_depth)."""
    if relative:
        write_relative_depth(output, stem, depth, cfg)
        return
    vmin, vmax = colours if colours is not None else viz.depth_range(depth)
    picture = viz.colorize_depth(depth, vmin, vmax, cfg.cmap)
    if cfg.colorbar:  # the scale beside the picture, so that the file can be read on its own
        picture = viz.add_colorbar(picture, vmin, vmax, cfg.cmap, label="depth (m)")
    save_png(picture, output / f"{stem}_color.png")
    scaled = np.clip(np.rint(depth.astype(np.float64) * float(cfg.depth_scale)), 0, UINT16_MAX)
    save_png(scaled.astype(np.uint16), output / f"{stem}{depth_png_suffix(cfg.depth_scale)}")
    if cfg.save_npy:
        save_npy(depth.astype(np.float32), output / f"{stem}.npy")


def write_relative_depth(output: Path, stem: str, disparity: np.ndarray, cfg: DictConfig) -> None:
    """A relative model's map, for viewing: normalised to this image's own range (0 farthest, 1 nearest),
    as 16 bits and in colours (nearest in the colour nearest depths get in metric pictures); the raw
    output in the .npy."""
    low, high = float(disparity.min()), float(disparity.max())
    unit = (disparity.astype(np.float64) - low) / (high - low) if high > low else np.zeros(disparity.shape)
    save_png(np.rint(unit * UINT16_MAX).astype(np.uint16), output / f"{stem}{RELATIVE_SUFFIX}")
    if cfg.save_npy:
        save_npy(disparity.astype(np.float32), output / f"{stem}.npy")
    save_png(viz.colorize(1 - unit, 0.0, 1.0, cfg.cmap), output / f"{stem}_color.png")


def write_run_files(output: Path, names: dict[str, str], cfg: DictConfig, colours, palette, classes) -> None:
    """The files written once per run: the segmentation legend (legend.png) and the class names and
    colours (classes.json)."""
    if "legend.png" in names:
        save_png(viz.legend(classes, palette), output / names["legend.png"])
    if "classes.json" in names:
        entries = [
            {"id": i, "name": name, "color": [int(c) for c in palette[i]]} for i, name in enumerate(classes)
        ]
        with atomic_path(output / names["classes.json"]) as tmp:
            Path(tmp).write_text(json.dumps({"classes": entries}, indent=1) + "\n")


def write_segmentation(
    output: Path, stem: str, image: np.ndarray, labels: np.ndarray, palette: np.ndarray, cfg: DictConfig
) -> None:
    # 8 bits hold ids 0–254 (255 stays free for "ignore", as in the datasets); more classes need 16.
    dtype = np.uint8 if len(palette) <= 255 else np.uint16
    save_png(labels.astype(dtype), output / f"{stem}.png")
    save_png(viz.colorize_labels(labels, palette, ignore_index=None), output / f"{stem}_color.png")
    save_png(
        viz.overlay_labels(image, labels, palette, float(cfg.alpha), ignore_index=None),
        output / f"{stem}_overlay.png",
    )


def write_results(
    output: Path, stem: str, image: np.ndarray, result: np.ndarray, layout: Layout, palette, cfg, colours
) -> list[str]:
    """One image's result files, all of them or none: when one cannot be written (OSError, raised), those
    already written for it are removed. Returns their names."""
    names = layout.names(stem)
    try:
        if isinstance(layout, MultiLayout):  # result, palette, colours: {head: ...}
            for name, own in layout.parts:
                write_results(
                    output, f"{stem}_{name}", image, result[name], own, palette[name], cfg, colours[name]
                )
        elif layout.task == "depth":
            write_depth(output, stem, result, cfg, colours, layout.relative)
        else:
            write_segmentation(output, stem, image, result, palette, cfg)
    except OSError:
        for name in names:
            if is_plain_file(output / name):
                with contextlib.suppress(OSError):
                    os.remove(output / name)
        raise
    return names


# --------------------------------------------------------------------------- main


def predict(cfg: DictConfig) -> int:
    """Everything predict.py does; returns the exit status (0, or EXIT_SKIPPED). Set-up mistakes exit
    with status 2 and one line (dense._cli), before any image is processed."""
    with _cli.setup_errors():
        import_modules(cfg.get("imports"))  # the user's own registered heads, backbones, datasets
        check_options(cfg)
        output = Path(cfg.output).expanduser()
        paths = list_images(cfg.input)
        check_output_path(output)
        ours = read_record(output) if output.is_dir() else set()
        paths = without_own_results(paths, cfg.input, output, ours)
        if not paths:
            raise ConfigError(f"input folder {cfg.input} holds no image files ({' '.join(INPUT_SUFFIXES)})")
        device = resolve_device(cfg.device)
        if cfg.get("model") is not None:  # a file written by export.py, run by ONNX Runtime
            model = onnx_model_for_predict(cfg)
            stored_names = model.class_names
        else:
            model, stored_names = build(cfg)
            model = apply_speed_options(
                model.to(device), compile=cfg.compile, bf16_autocast=cfg.precision == "bf16"
            )
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
            palette = (
                viz.get_palette(num_classes(model), cfg.palette) if model.task == "segmentation" else None
            )
            classes = class_names(model, stored_names) if model.task == "segmentation" else None
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
    palette = {
        n: viz.get_palette(num_classes(p), cfg.palette) if n in segmentation else None
        for n, p in parts.items()
    }
    classes = {
        n: class_names(p, stored_names.get(n)) if n in segmentation else None for n, p in parts.items()
    }
    colours = {n: depth_colour_range(cfg, p) if p.task == "depth" else None for n, p in parts.items()}
    return layout, palette, classes, colours


def describe_colours(
    cfg: DictConfig, model: DenseModel, output: Path, run_names: dict[str, str], colours, relative=False
) -> str:
    """One line that says how to read the colour pictures."""
    if relative:
        return (
            f"relative depth (disparity up to an unknown scale and shift, no unit): <stem>{RELATIVE_SUFFIX} and "
            f"<stem>_color.png ({cfg.cmap}) are normalised per image for viewing (0 = farthest, 65535 = "
            "nearest), not comparable across images; <stem>.npy holds the raw output"
        )
    if model.task == "segmentation":
        return f"class colours: {output / run_names['legend.png']}, names and colours: {output / run_names['classes.json']}"
    bar = ", colour bar beside each" if cfg.colorbar else ""
    files = (
        f"<stem>_color.png the pictures{bar}; <stem>{depth_png_suffix(cfg.depth_scale)} 16-bit integers = "
        f"metres × {float(cfg.depth_scale):g} (0 = none), for programs"
        + ("; <stem>.npy float32 metres" if cfg.save_npy else "")
    )
    if colours is None:
        return f"depth colours ({cfg.cmap}): each image from its own nearest to its farthest depth (depth_range=auto); {files}"
    source = "the model's depth range" if cfg.depth_range == "model" else "depth_range"
    return (
        f"depth colours ({cfg.cmap}): {colours[0]:g} to {colours[1]:g} m in every image ({source}); {files}"
    )


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    status = _cli.run(predict, cfg)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    _cli.main(main, __file__)
