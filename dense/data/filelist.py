"""Depth datasets listed by a BTS-style file list (lines "rgb_path depth_path [focal]"), with 16-bit
depth PNGs of metres × depth_scale: NYU's list layout and KITTI's Eigen split share this code."""

from __future__ import annotations

from pathlib import Path

from dense.core.errors import DatasetError
from dense.data.base import DenseDataset
from dense.data.readers import read_depth_png, read_rgb, read_text
from dense.data.sample import RawSample
from dense.data.transforms import COLOR_AUG_FORMS


def read_pair_list(
    list_file: Path, image_root: Path, depth_root: Path | tuple[Path, ...]
) -> tuple[list[tuple[str, Path, Path]], int]:
    """A BTS-style file list: lines "rgb_path depth_path [focal]", paths relative to the roots
    (a leading '/' is ignored, as in BTS lists). `depth_root` may be several folders: a depth path
    is taken from the first that holds it (KITTI's train/ and val/ halves). Lines whose depth is
    "None" (no ground truth) are skipped. Returns ([(name, rgb, depth)], number skipped); fails on
    malformed lines, missing files or an empty list."""
    depth_roots = (depth_root,) if isinstance(depth_root, Path) else tuple(depth_root)
    pairs, skipped, missing = [], 0, []
    for lineno, line in enumerate(read_text(list_file, "file list").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DatasetError(
                f"{list_file}:{lineno}: expected 'rgb_path depth_path [focal]', got {line.strip()!r}"
            )
        rgb_rel, depth_rel = fields[0].lstrip("/\\"), fields[1].lstrip("/\\")
        if depth_rel == "None":
            skipped += 1
            continue
        rgb = image_root / rgb_rel
        if not rgb.is_file():
            missing.append(rgb)
        depth = next((r / depth_rel for r in depth_roots if (r / depth_rel).is_file()), None)
        if depth is None:
            depth = depth_roots[0] / depth_rel
            missing.append(depth)
        pairs.append((str(Path(rgb_rel).with_suffix("")), rgb, depth))
    if missing:
        raise DatasetError(
            f"{list_file} names {len(missing)} files that do not exist, e.g. {missing[0]}; "
            f"rgb paths are relative to {image_root}, depth paths to {' or '.join(map(str, depth_roots))}"
        )
    if not pairs:
        raise DatasetError(
            f"{list_file} lists no samples with ground truth; expected lines 'rgb_path depth_path [focal]'"
        )
    return pairs, skipped


def read_depth_pair(name: str, rgb: Path, depth: Path, depth_scale: float) -> RawSample:
    """RGB image + integer depth PNG (metres × depth_scale): a line of a BTS-style file list, or a
    folder dataset's PNG depth."""
    metres, bits = read_depth_png(depth, depth_scale)
    return RawSample(name, read_rgb(rgb), metres, source=str(depth), depth_unit="scaled", depth_bits=bits)


class DepthFileList(DenseDataset):
    """RGB + depth PNG pairs named by a file list. Subclasses find the list (`read_file_list`) and
    choose the recipe; `depth_scale` (stored value / depth_scale = metres) and `color_aug` (the
    colour augmentation's form, transforms.GammaBrightnessColor) are checked here."""

    fixed_task = "depth"

    def __init__(self, root=None, split: str = "train", *, depth_scale: float, color_aug: str, **common):
        super().__init__(root, split, **common)
        if color_aug not in COLOR_AUG_FORMS:
            raise DatasetError(f"data.color_aug={color_aug!r} is not one of {COLOR_AUG_FORMS}")
        self.depth_scale, self.color_aug = depth_scale, color_aug

    def read_file_list(self, list_file: Path, image_root: Path, depth_root: Path | tuple[Path, ...]) -> None:
        """self.items from `list_file` (see read_pair_list); self.skipped: its lines without ground truth."""
        self.list_file = list_file
        self.items, self.skipped = read_pair_list(list_file, image_root, depth_root)

    def __len__(self) -> int:
        return len(self.items)

    def dataset_files(self) -> tuple[Path, ...]:
        return (self.list_file,)

    def read(self, index: int) -> RawSample:
        return read_depth_pair(*self.items[index], self.depth_scale)
