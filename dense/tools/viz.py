"""Pictures of predictions: depth and error colour maps, class palettes, overlays, comparison figures
and the PCA picture of backbone features. Used by predict.py and the notebooks alike.

Everything returns plain uint8 H×W×3 RGB arrays (or a matplotlib Figure), so a picture can be saved
with PIL, shown with imshow, or tested pixel by pixel. Inputs may be numpy arrays or tensors.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import matplotlib
import numpy as np
import torch

from dense.core.constants import IGNORE_INDEX
from dense.data.palettes import ADE20K_PALETTE, generic_palette, voc_palette
from dense.data.transforms import denormalize_image

# magma reversed: near is bright, far is dark, and lightness changes monotonically with depth, so the
# picture reads correctly in greyscale and for colour-blind viewers (DINOv2's own notebooks use it).
DEPTH_CMAP = "magma_r"
ERROR_CMAP = "inferno"
# Mid grey for pixels without a value (depth 0 / NaN / inf): a neutral colour that none of magma,
# inferno, turbo or viridis contains (each is at least 80 RGB units away from it).
INVALID_COLOR = (128, 128, 128)
# Ignored label pixels (255): Pascal VOC's own colour for its "void" border.
IGNORE_COLOR = (224, 224, 192)
WRONG_COLOR = (255, 0, 0)

__all__ = [
    "ADE20K_PALETTE",
    "DEPTH_CMAP",
    "INVALID_COLOR",
    "add_colorbar",
    "colorbar",
    "colorize",
    "colorize_depth",
    "colorize_labels",
    "compare_figure",
    "denormalize_image",
    "depth_range",
    "generic_palette",
    "get_palette",
    "label_error_map",
    "legend",
    "overlay_labels",
    "pca_rgb",
    "to_rgb_image",
    "voc_palette",
]


# --------------------------------------------------------------------------- input conversion


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _plane(x, what: str) -> np.ndarray:
    """H×W from H×W, 1×H×W or 1×1×H×W (one image's depth or labels)."""
    a = _numpy(x)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{what} must be H×W (or 1×H×W), got shape {a.shape}")
    return a


def to_rgb_image(image) -> np.ndarray:
    """uint8 H×W×3 for display: passes uint8 H×W×3 through, transposes a uint8 3×H×W tensor (what the
    datasets give), denormalises an ImageNet-normalised float 3×H×W tensor."""
    if isinstance(image, torch.Tensor):
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if (
            image.ndim != 3
            or image.shape[0] != 3
            or not (image.is_floating_point() or image.dtype == torch.uint8)
        ):
            raise ValueError(
                f"expected a 3×H×W image tensor (uint8, or normalised floats), got {image.dtype} {tuple(image.shape)}"
            )
        return denormalize_image(image)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected a uint8 H×W×3 array or a 3×H×W image tensor, got {image.dtype} {image.shape}"
        )
    return image


# --------------------------------------------------------------------------- continuous values


def _lut(cmap: str) -> np.ndarray:
    """256×3 uint8 table of a matplotlib colour map: indexing a table is all colouring needs."""
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(
            f"unknown colour map {cmap!r}; e.g. 'magma_r', 'magma', 'turbo', 'inferno'"
        ) from None
    return (colormap(np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def depth_range(depth, valid=None) -> tuple[float, float]:
    """(min, max) of the valid pixels (finite and > 0 unless `valid` says otherwise); (0, 1) if none."""
    d = _numpy(depth).astype(np.float64)
    valid = _depth_valid(d) if valid is None else _numpy(valid).astype(bool)
    if not valid.any():
        return 0.0, 1.0
    return float(d[valid].min()), float(d[valid].max())


def _depth_valid(d: np.ndarray) -> np.ndarray:
    return np.isfinite(d) & (d > 0)


def colorize(
    values,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = DEPTH_CMAP,
    valid=None,
    invalid_color: Sequence[int] = INVALID_COLOR,
) -> np.ndarray:
    """H×W values → uint8 H×W×3 through `cmap`; vmin/vmax default to the valid pixels' range.

    valid: H×W bool (default: finite values). Pixels outside it get `invalid_color`. Values outside
    [vmin, vmax] take the end colours.
    """
    v = _plane(values, "values").astype(np.float64)
    valid = np.isfinite(v) if valid is None else (_plane(valid, "valid").astype(bool) & np.isfinite(v))
    low, high = depth_range(v, valid)
    vmin = low if vmin is None else float(vmin)
    vmax = high if vmax is None else float(vmax)
    scale = 255.0 / (vmax - vmin) if vmax > vmin else 0.0
    index = np.zeros(v.shape, np.int64)
    index[valid] = np.clip(np.rint((v[valid] - vmin) * scale), 0, 255).astype(np.int64)
    rgb = _lut(cmap)[index]
    rgb[~valid] = invalid_color
    return rgb


def colorize_depth(
    depth,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = DEPTH_CMAP,
    invalid_color: Sequence[int] = INVALID_COLOR,
) -> np.ndarray:
    """Depth (H×W or 1×H×W, metres) → uint8 H×W×3. Depth 0, negative, NaN or inf means "no value"
    (what datasets store for missing measurements) and is drawn in `invalid_color`.

    vmin/vmax: a fixed range (e.g. the model's min/max depth, to compare images); None = this image's.
    """
    d = _plane(depth, "depth").astype(np.float64)
    return colorize(d, vmin, vmax, cmap, valid=_depth_valid(d), invalid_color=invalid_color)


# A bar needs this many rows for its ticks and label to be legible; a lower picture is padded below.
MIN_COLORBAR_HEIGHT = 64


def add_colorbar(
    image: np.ndarray, vmin: float, vmax: float, cmap: str = DEPTH_CMAP, label: str = "m"
) -> np.ndarray:
    """The uint8 H×W×3 picture with a labelled colour bar drawn to its right, of the picture's height
    (at least MIN_COLORBAR_HEIGHT: a lower picture is padded with white below, never resized)."""
    height = max(image.shape[0], MIN_COLORBAR_HEIGHT)
    picture = np.pad(image, ((0, height - image.shape[0]), (0, 0), (0, 0)), constant_values=255)
    return np.concatenate([picture, colorbar(height, vmin, vmax, cmap, label)], axis=1)


def colorbar(height: int, vmin: float, vmax: float, cmap: str = DEPTH_CMAP, label: str = "m") -> np.ndarray:
    """A uint8 height×W×3 labelled colour bar from vmin (bottom) to vmax (top) on white, to put beside a
    picture (add_colorbar: predict.py's _color.png). Drawn with PIL in matplotlib's DejaVu Sans, ticks
    from matplotlib's MaxNLocator: no matplotlib figure, whose reference cycles would wait for the
    garbage collector (predict.py draws one bar per image: 170 KiB a bar piled up between collections)."""
    from matplotlib.ticker import MaxNLocator
    from PIL import Image, ImageDraw

    font = _font(int(np.clip(height / 20, 7, 40)))  # text scales with the picture
    size = font.size
    top, bottom = size, height - size  # half a label fits above the top tick and below the bottom one
    rows = max(bottom - top, 2)
    low, high = float(vmin), float(vmax)
    span = high - low if high > low else 1.0
    ticks = [
        t for t in MaxNLocator(nbins=max(2, rows // (2 * size))).tick_values(low, high) if low <= t <= high
    ]
    labels = [f"{t:g}" for t in ticks]
    left, bar_width, tick_length = size // 2, size, max(2, size // 3)
    text_left = left + bar_width + tick_length + 2
    text_width = int(max((font.getlength(text) for text in labels), default=0))
    title = Image.new("L", (int(font.getlength(label)) + 2, size + 4), 0)
    ImageDraw.Draw(title).text((1, 0), label, font=font, fill=255)
    title = title.rotate(90, expand=True)
    width = text_left + text_width + size // 2 + title.width + 2
    canvas = Image.new("RGB", (width, height), "white")
    # The gradient, vmax at the top row: the colours colorize_depth gives those values.
    values = high - np.arange(rows) / (rows - 1) * span
    index = np.clip(np.rint((values - low) / span * 255), 0, 255).astype(int)
    strip = np.repeat(_lut(cmap)[index][:, None, :], bar_width, axis=1)
    canvas.paste(Image.fromarray(strip), (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((left, top, left + bar_width - 1, top + rows - 1), outline="black")
    for value, text in zip(ticks, labels):
        y = top + (high - value) / span * (rows - 1)
        draw.line((left + bar_width, y, left + bar_width + tick_length, y), fill="black")
        draw.text((text_left, y), text, font=font, fill="black", anchor="lm")
    title_top = max(0, (height - title.height) // 2)
    canvas.paste(
        (0, 0, 0),
        (width - title.width - 1, title_top),
        title.crop((0, 0, title.width, min(title.height, height))),
    )
    return np.asarray(canvas)


@functools.lru_cache(maxsize=16)
def _font(pixels: int):
    """DejaVu Sans (the font matplotlib ships and draws with) at `pixels`, for PIL."""
    from PIL import ImageFont

    return ImageFont.truetype(
        os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), pixels
    )


# --------------------------------------------------------------------------- class palettes (dense/data/palettes.py)


PALETTES = ("auto", "ade20k", "voc", "generic")


def get_palette(num_classes: int, name: str = "auto") -> np.ndarray:
    """num_classes×3 uint8. "auto": ADE20K's for 150 classes, VOC's for 21, the generic one otherwise."""
    if name == "auto":
        name = {150: "ade20k", 21: "voc"}.get(num_classes, "generic")
    if name == "ade20k":
        if num_classes > len(ADE20K_PALETTE):
            raise ValueError(f"the ADE20K palette has 150 colours, not {num_classes}; use palette=generic")
        return ADE20K_PALETTE[:num_classes].copy()
    if name == "voc":
        if num_classes > 256:
            raise ValueError(f"the VOC palette has 256 colours, not {num_classes}; use palette=generic")
        return voc_palette(num_classes)
    if name == "generic":
        return generic_palette(num_classes)
    raise ValueError(f"unknown palette {name!r}; one of {PALETTES}")


def colorize_labels(
    labels,
    palette: np.ndarray,
    ignore_index: int | None = IGNORE_INDEX,
    ignore_color: Sequence[int] = IGNORE_COLOR,
) -> np.ndarray:
    """Class ids (H×W) → uint8 H×W×3 through `palette` (K×3); `ignore_index` pixels get ignore_color."""
    ids = _plane(labels, "labels").astype(np.int64)
    ignored = ids == ignore_index if ignore_index is not None else np.zeros(ids.shape, bool)
    known = ids[~ignored]
    if known.size and (known.min() < 0 or known.max() >= len(palette)):
        raise ValueError(
            f"class ids range over [{known.min()}, {known.max()}] but the palette has {len(palette)} colours"
        )
    rgb = np.asarray(palette, np.uint8)[np.where(ignored, 0, ids)]
    rgb[ignored] = ignore_color
    return rgb


def overlay_labels(
    image,
    labels,
    palette: np.ndarray,
    alpha: float = 0.5,
    ignore_index: int | None = IGNORE_INDEX,
) -> np.ndarray:
    """The image with class colours blended in at `alpha` (0 = image only, 1 = colours only); ignored
    pixels show the image unchanged."""
    rgb = to_rgb_image(image)
    colors = colorize_labels(labels, palette, ignore_index)
    if colors.shape != rgb.shape:
        raise ValueError(f"labels are {colors.shape[:2]} but the image is {rgb.shape[:2]}")
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colors.astype(np.float32)
    if ignore_index is not None:
        ignored = _plane(labels, "labels") == ignore_index
        blend[ignored] = rgb[ignored]
    return (blend + 0.5).astype(np.uint8)


def legend(class_names: Sequence[str], palette: np.ndarray, rows_per_column: int = 40) -> np.ndarray:
    """A uint8 picture of the class colours: a swatch, the class id and its name per row, in as many
    columns of `rows_per_column` as the classes need (predict.py's legend.png)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    count = len(class_names)
    if len(palette) < count:
        raise ValueError(f"legend: {len(palette)} palette colours for {count} classes")
    row, column_width, dpi = 20, 240, 100  # pixels
    rows = min(count, rows_per_column)
    columns = -(-count // rows_per_column)
    width, height = columns * column_width, rows * row + row // 2
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    for index, name in enumerate(class_names):
        x = (index // rows_per_column) * column_width + 6
        y = height - (index % rows_per_column + 1) * row  # from the top, in pixels
        colour = np.asarray(palette[index], dtype=np.float64) / 255
        fig.patches.append(
            Rectangle(
                (x / width, y / height),
                28 / width,
                (row - 5) / height,
                transform=fig.transFigure,
                facecolor=colour,
                edgecolor="black",
                linewidth=0.5,
            )
        )
        name = name if len(name) <= 22 else name[:21] + "…"  # a column holds 22 characters
        fig.text(
            (x + 36) / width,
            (y + (row - 5) / 2) / height,
            f"{index:>3}  {name}",
            fontsize=9,
            va="center",
            family="monospace",
        )
    fig.canvas.draw()
    return np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])


def label_error_map(
    image, prediction, target, ignore_index: int | None = IGNORE_INDEX
) -> tuple[np.ndarray, float]:
    """(picture, accuracy): wrong pixels red over a dimmed image, ignored ones grey; accuracy over the
    labelled pixels."""
    pred, gt = _plane(prediction, "prediction"), _plane(target, "target")
    labelled = gt != ignore_index if ignore_index is not None else np.ones(gt.shape, bool)
    wrong = labelled & (pred != gt)
    picture = (to_rgb_image(image).astype(np.float32) * 0.35).astype(np.uint8)
    picture[wrong] = WRONG_COLOR
    picture[~labelled] = INVALID_COLOR
    accuracy = 1.0 - wrong.sum() / max(int(labelled.sum()), 1)
    return picture, float(accuracy)


# --------------------------------------------------------------------------- figures


def _rows(x) -> list | None:
    """One item per figure row: a list or tuple is several rows, anything else one."""
    if x is None:
        return None
    return list(x) if isinstance(x, (list, tuple)) else [x]


def compare_figure(
    image,
    prediction,
    target=None,
    *,
    task: str = "depth",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = DEPTH_CMAP,
    palette: np.ndarray | None = None,
    ignore_index: int | None = IGNORE_INDEX,
    titles: Sequence[str] | None = None,
    panel_size: float = 3.2,
    class_names: Sequence[str] | None = None,
):
    """A matplotlib Figure, one row per image: image | prediction | ground truth | error.

    image: uint8 H×W×3 or a normalised 3×H×W tensor; prediction / target: depth H×W (metres) or class
    ids H×W. Pass lists for several rows. Without a target only image | prediction are drawn.
    Depth: prediction and ground truth share one range and a colour bar (vmin/vmax, default the
    ground truth's valid range, else the prediction's); the error is |prediction − truth| in metres
    where the truth is valid. Segmentation: palette colours (default: get_palette for the largest id
    of all rows, so a class has one colour throughout) and the wrong pixels in red; a legend under the
    panels names the colour of every class (`class_names`, default "class 0", "class 1", ... for the
    ids that occur).
    """
    import matplotlib.pyplot as plt

    if task not in ("depth", "segmentation"):
        raise ValueError(f"task must be 'depth' or 'segmentation', got {task!r}")
    images, predictions, targets = _rows(image), _rows(prediction), _rows(target)
    if len(predictions) != len(images) or (targets is not None and len(targets) != len(images)):
        raise ValueError("image, prediction and target need the same number of items")
    if task == "segmentation" and palette is None:
        labelled = [_plane(x, "labels") for x in predictions + (targets or [])]
        largest = max(int(x[x != ignore_index].max(initial=0)) for x in labelled)
        palette = get_palette(largest + 1)
    columns = 2 if targets is None else 4
    fig, axes = plt.subplots(
        len(images), columns, figsize=(panel_size * columns + 1.2, panel_size * len(images)), squeeze=False
    )
    for row, (img, pred) in enumerate(zip(images, predictions)):
        gt = targets[row] if targets is not None else None
        ax = axes[row]
        ax[0].imshow(to_rgb_image(img))
        ax[0].set_title(titles[row] if titles else "image")
        if task == "depth":
            _depth_row(fig, ax, _plane(pred, "prediction"), gt, vmin, vmax, cmap)
        else:
            _segmentation_row(ax, img, _plane(pred, "prediction"), gt, palette, ignore_index)
        for a in ax:
            a.set_axis_off()
    if task == "segmentation":
        _class_legend(fig, palette, class_names, predictions + (targets or []), ignore_index)
    return fig


def _class_legend(fig, palette: np.ndarray, class_names, label_maps: list, ignore_index) -> None:
    """Coloured patches with the class names under the figure: every named class, or without names
    the ids that occur in the maps."""
    from matplotlib.patches import Patch

    if class_names is None:
        ids = sorted(
            {int(i) for x in label_maps for i in np.unique(_plane(x, "labels")) if i != ignore_index}
        )
        entries = [(i, f"class {i}") for i in ids]
    else:
        entries = list(enumerate(class_names))
    handles = [Patch(facecolor=palette[i] / 255, edgecolor="black", label=name) for i, name in entries]
    columns = min(len(handles), 8)
    rows = -(-len(handles) // columns) if handles else 0
    fig.legend(handles=handles, loc="lower center", ncol=max(columns, 1), frameon=False)
    fig.subplots_adjust(bottom=min(0.4, 0.06 + 0.35 * rows / fig.get_size_inches()[1]))


def _depth_row(fig, ax, pred: np.ndarray, gt, vmin, vmax, cmap: str) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    gt = _plane(gt, "target") if gt is not None else None
    low, high = depth_range(gt if gt is not None and _depth_valid(gt).any() else pred)
    low, high = (low if vmin is None else vmin), (high if vmax is None else vmax)
    ax[1].imshow(colorize_depth(pred, low, high, cmap))
    ax[1].set_title("predicted depth")
    bar = ScalarMappable(Normalize(low, high), matplotlib.colormaps[cmap])
    if gt is None:
        fig.colorbar(bar, ax=ax[1], fraction=0.046, pad=0.02, label="depth (m)")
        return
    ax[2].imshow(colorize_depth(gt, low, high, cmap))
    ax[2].set_title("ground truth")
    fig.colorbar(bar, ax=ax[1:3].tolist(), fraction=0.046, pad=0.02, label="depth (m)")
    valid = _depth_valid(gt)
    error = np.abs(pred - gt)
    # The 99th percentile, not the maximum: a few pixels at depth edges would darken everything else.
    error_high = float(np.percentile(error[valid], 99)) if valid.any() else 1.0
    mean = float(error[valid].mean()) if valid.any() else float("nan")
    ax[3].imshow(colorize(error, 0.0, error_high, ERROR_CMAP, valid=valid))
    ax[3].set_title(f"|error| (mean {mean:.2f} m)")
    error_bar = ScalarMappable(Normalize(0.0, error_high), matplotlib.colormaps[ERROR_CMAP])
    fig.colorbar(error_bar, ax=ax[3], fraction=0.046, pad=0.02, label="m")


def _segmentation_row(ax, image, pred: np.ndarray, gt, palette: np.ndarray, ignore_index) -> None:
    ax[1].imshow(colorize_labels(pred, palette, ignore_index))
    ax[1].set_title("predicted classes")
    if gt is None:
        return
    ax[2].imshow(colorize_labels(gt, palette, ignore_index))
    ax[2].set_title("ground truth")
    picture, accuracy = label_error_map(image, pred, gt, ignore_index)
    ax[3].imshow(picture)
    ax[3].set_title(f"errors (pixel acc. {100 * accuracy:.1f}%)")


# --------------------------------------------------------------------------- features


def pca_rgb(features, size: tuple[int, int] | None = None, quantile: float = 0.01) -> np.ndarray:
    """First three principal components of patch features as RGB: the DINOv2 picture.

    features: D×h×w or B×D×h×w (e.g. `model.extract_features(padded).patches[-1]`). With a batch
    the components are fitted on all images together, so a colour means the same thing in each.
    size: (H, W) to upsample to (bilinear), e.g. the padded image size; default the patch grid.
    Each component is stretched between its `quantile` and 1 − `quantile` values (a few extreme
    patches would otherwise wash the picture out). Returns uint8 h×w×3 (or B×h×w×3).
    """
    x = (
        features.detach().float().cpu()
        if isinstance(features, torch.Tensor)
        else torch.as_tensor(features).float()
    )
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"features must be D×h×w or B×D×h×w, got shape {tuple(x.shape)}")
    B, D, h, w = x.shape
    if D < 3:
        raise ValueError(f"PCA to 3 components needs at least 3 feature channels, got {D}")
    rows = x.permute(0, 2, 3, 1).reshape(-1, D).double()
    rows = rows - rows.mean(0)
    # The covariance is only D×D, and eigh is deterministic (unlike randomised low-rank PCA).
    _, vectors = torch.linalg.eigh(rows.T @ rows)
    components = vectors[:, -3:].flip(1)  # eigh sorts ascending; the largest first
    # An eigenvector's sign is arbitrary: make its largest entry positive so colours are reproducible.
    signs = torch.sign(components.gather(0, components.abs().argmax(0, keepdim=True)))
    projected = rows @ (components * signs)
    low = torch.quantile(projected, quantile, dim=0)
    high = torch.quantile(projected, 1.0 - quantile, dim=0)
    rgb = ((projected - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
    rgb = rgb.reshape(B, h, w, 3).permute(0, 3, 1, 2).float()
    if size is not None:
        rgb = torch.nn.functional.interpolate(rgb, size=tuple(size), mode="bilinear", align_corners=False)
    out = (rgb.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    return out[0] if single else out
