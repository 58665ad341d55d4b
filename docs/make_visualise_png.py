"""Regenerates docs/images/visualise.png, the README's "Visualise" picture, from real runs:

    python docs/make_visualise_png.py          # about 5 minutes on 2 CPU cores

1. train.py experiment=smoke, once for depth and once for segmentation (random-initialised ViT-S/14 on
   synthetic scenes; kept in outputs/docs/ and reused on the next run);
2. synthetic test scenes saved as PNG files, then predict.py on that folder with each checkpoint;
3. one figure from predict.py's own files (`_color.png`, `_overlay.png`) next to the ground truth
   and the PCA of the backbone's features.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

import dense
from dense.data import SYNTHETIC_CLASSES, SyntheticScenes
from dense.data.transforms import normalize_image
from dense.tools import viz

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "outputs" / "docs"
SIZE = (168, 224)  # H, W of the test scenes (training used 112×112: the model takes any size)
SCENES = (1, 4)  # test-split scenes to show
DEPTH_RANGE = (0.5, 7.0)  # one colour range for prediction and truth


def smoke(task: str) -> Path:
    run_dir = WORK / f"smoke_{task}"
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    if not checkpoint.is_file():
        command = [sys.executable, "train.py", "experiment=smoke", f"hydra.run.dir={run_dir}"]
        if task == "segmentation":
            command += ["head=seg_linear", "data.task=segmentation"]
        subprocess.run(command, check=True, cwd=ROOT)
    return checkpoint


def main() -> None:
    checkpoints = {task: smoke(task) for task in ("depth", "segmentation")}
    scenes = SyntheticScenes(split="test", image_size=SIZE, num_test=max(SCENES) + 1)
    inputs = WORK / "scenes"
    inputs.mkdir(parents=True, exist_ok=True)
    truth = {}
    for index in SCENES:
        scene = scenes.scene(index)
        Image.fromarray(scene.image).save(inputs / f"scene{index}.png")
        truth[index] = scene
    for task, checkpoint in checkpoints.items():
        # One range for every picture and no bar beside each: the figure draws one bar for the column.
        extra = (
            [f"depth_range=[{DEPTH_RANGE[0]},{DEPTH_RANGE[1]}]", "colorbar=false"] if task == "depth" else []
        )
        command = [
            sys.executable,
            "predict.py",
            f"ckpt={checkpoint}",
            f"input={inputs}",
            f"output={WORK / task}",
        ]
        subprocess.run([*command, "progress=false", *extra], check=True, cwd=ROOT)

    depth_model = dense.load_model(checkpoints["depth"])
    palette = viz.get_palette(len(SYNTHETIC_CLASSES))
    columns = [
        "image",
        "predicted depth",
        "true depth",
        "predicted classes",
        "true classes",
        "PCA of features",
    ]
    # Panels sized to the scenes' 3:4 aspect; the bottom 22% holds the colour bar and the legend.
    fig = Figure(figsize=(2.2 * len(columns), 1.65 * len(SCENES) / 0.7))
    axes = fig.subplots(len(SCENES), len(columns))
    fig.subplots_adjust(left=0.005, right=0.995, top=0.92, bottom=0.22, wspace=0.04, hspace=0.06)
    for row, index in enumerate(SCENES):
        scene = truth[index]
        images = normalize_image(scene.image)[None]
        padded, padding = depth_model.pad(images)
        with torch.no_grad():
            patches = depth_model.extract_features(padded).patches[-1]
        left, right, top, bottom = padding
        pca = viz.pca_rgb(patches[0], size=padded.shape[-2:])[top : top + SIZE[0], left : left + SIZE[1]]
        panels = [
            scene.image,
            np.asarray(Image.open(WORK / "depth" / f"scene{index}_color.png")),
            viz.colorize_depth(scene.depth, *DEPTH_RANGE),
            np.asarray(Image.open(WORK / "segmentation" / f"scene{index}_overlay.png")),
            viz.overlay_labels(scene.image, scene.mask, palette, alpha=0.5),
            pca,
        ]
        for ax, panel, title in zip(axes[row], panels, columns):
            ax.imshow(panel)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=10)
    # One bar under both depth columns (they share DEPTH_RANGE), one legend under both class columns.
    first, last = axes[-1, 1].get_position(), axes[-1, 2].get_position()
    bar = fig.add_axes((first.x0 + 0.02, 0.12, last.x1 - first.x0 - 0.04, 0.035))
    fig.colorbar(
        ScalarMappable(Normalize(*DEPTH_RANGE), matplotlib.colormaps[viz.DEPTH_CMAP]),
        cax=bar,
        orientation="horizontal",
        label="depth (m)",
    )
    first, last = axes[-1, 3].get_position(), axes[-1, 4].get_position()
    handles = [Patch(color=palette[k] / 255, label=n) for k, n in enumerate(SYNTHETIC_CLASSES)]
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=((first.x0 + last.x1) / 2, 0.02),
        ncol=4,
        frameon=False,
    )
    out = ROOT / "docs" / "images" / "visualise.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
