"""The numbers and names every layer agrees on: the ImageNet normalisation, the ignore label, the
image files the datasets read, and the colour images are padded with."""

from __future__ import annotations

# DINOv2 (and DINOv3's web-image weights) were trained on images normalised with these, on 0–1 values.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The label of pixels that count for neither the loss nor the metrics (and of padding).
IGNORE_INDEX = 255

# The image files a dataset folder is searched for (predict.py takes more: dense.core.io.INPUT_SUFFIXES).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Images are padded with the mean colour, which is 0 after normalisation: what mmseg gets by padding
# after Normalize, what DenseModel's zero padding of a normalised image means, and what transparent
# pixels become (dense.core.io.to_rgb).
MEAN_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)
