"""KITTI depth, Eigen split, in the Monocular-Depth-Estimation-Toolbox layout used by DINOv2.

    root/kitti_eigen_train.txt, root/kitti_eigen_test.txt   lines "rgb depth focal"
    root/input/<rgb path>        e.g. 2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png
    root/gt_depth/<depth path>   e.g. 2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png

The depth folder may also be KITTI's own depth-annotated release as it unpacks, with its drives
split into train/ and val/ (data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/image_02):
each depth path is then found in whichever half holds it (data.depth_dir=data_depth_annotated).

Depth PNGs are uint16 metres × 256, 0 where the projected LiDAR has no point. Lines whose depth is
"None" (test frames without ground truth) are skipped. val and test are both the Eigen test split.
Train: KB crop (bottom-centred 352×1216), rotate ±2.5°, flip, random crop 352×704, colour (the
toolbox's form unless color_aug="bts"); eval: KB crop; metrics use the Garg crop and max depth 80 m.
"""

from __future__ import annotations

from dense.data.filelist import DepthFileList
from dense.data.readers import check_exists, resolve_root
from dense.data.registry import register_dataset
from dense.data.transforms import kitti_eval, kitti_train, size_pair

LIST_FILES = {"train": "kitti_eigen_train.txt", "val": "kitti_eigen_test.txt", "test": "kitti_eigen_test.txt"}
LAYOUT = (
    "kitti_eigen_train.txt / kitti_eigen_test.txt (lines 'rgb depth focal') with the rgb paths under "
    "<root>/input and the depth paths under <root>/gt_depth (or under its train/ and val/ halves, as in "
    "KITTI's data_depth_annotated)"
)
# The halves of KITTI's official depth-annotated release, searched after the depth folder itself.
ANNOTATED_SPLITS = ("train", "val")


@register_dataset("kitti")
class KITTIEigen(DepthFileList):
    layout = LAYOUT
    min_depth, max_depth = 1e-3, 80.0
    eval_crop = "garg"

    def __init__(
        self,
        root=None,
        split: str = "train",
        *,
        image_dir: str = "input",
        depth_dir: str = "gt_depth",
        crop_size=(352, 704),
        depth_scale: float = 256.0,
        color_aug: str = "toolbox",
        **common,
    ):
        super().__init__(root, split, depth_scale=depth_scale, color_aug=color_aug, **common)
        self.root = resolve_root(root, ("kitti",), LIST_FILES[self.split], LAYOUT)
        image_root = check_exists(self.root / image_dir, "KITTI image folder", LAYOUT)
        depth_root = check_exists(self.root / depth_dir, "KITTI depth folder", LAYOUT)
        halves = tuple(depth_root / h for h in ANNOTATED_SPLITS if (depth_root / h).is_dir())
        self.read_file_list(self.root / LIST_FILES[self.split], image_root, (depth_root, *halves))
        self.use_recipe(kitti_train(size_pair(crop_size), color_aug) if self.augment else kitti_eval())
