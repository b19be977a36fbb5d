"""CamStyle images (Zhong et al.; ECN layout): style copies of Market and Duke training images.

ECN ships `bounding_box_train_camstyle/` beside `bounding_box_train/`: for each training image
`<stem>.jpg` of camera c, CycleGAN copies `<stem>_fake_<c>to<s>.jpg` in the style of every other
camera s (both 1-based). MMCL (`UnsupervisedCamStylePreprocessor`) draws a camera uniformly per
sample and loads the original image when it is the sample's own camera, else that camera's copy;
a copy keeps its source's memory slot and pseudo label. This module matches the copies to their
sources; mlc_tf.data.pipeline makes the draw.
"""

from __future__ import annotations

import dataclasses
import os
import re

from absl import logging

from mlc_tf.data.datasets import DatasetError, ReidDataset

CAMSTYLE_FOLDER = "bounding_box_train_camstyle"
DATASETS = ("market1501", "dukemtmc")  # the ECN downloads; MSMT17's copies are named otherwise
_COPY_NAME = re.compile(r"(.+)_fake_(\d+)to(\d+)\.jpg")
LAYOUT = f"""<dataset folder>/   (Market-1501 or DukeMTMC-reID, with ECN's CamStyle download)
    bounding_box_train/0002_c1s1_000451_03.jpg                     a training image of camera 1
    {CAMSTYLE_FOLDER}/0002_c1s1_000451_03_fake_1to2.jpg  its copy in camera 2's style
    ...                                                            (one copy per other camera)"""


def parse_copy_name(file_name: str) -> tuple[str, int, int] | None:
    """(source file name, 0-based source camera, 0-based style camera) of a CamStyle copy.

    Args:
        file_name: a base name such as '0002_c1s1_000451_03_fake_1to2.jpg'.

    Returns:
        e.g. ('0002_c1s1_000451_03.jpg', 0, 1); None for a name not `<stem>_fake_<c>to<s>.jpg`.
    """
    match = _COPY_NAME.fullmatch(file_name)
    if match is None:
        return None
    return f"{match.group(1)}.jpg", int(match.group(2)) - 1, int(match.group(3)) - 1


def refuse_unsupported(name: str) -> None:
    """Raises unless the dataset `name` can have CamStyle images (Market-1501 or DukeMTMC-reID).

    Raises:
        DatasetError: any other dataset (synthetic, folder, msmt17).
    """
    if name not in DATASETS:
        raise DatasetError(
            f"--camstyle needs the ECN layout of market1501 or dukemtmc ({CAMSTYLE_FOLDER}/ "
            f"beside bounding_box_train/); the {name} dataset has no CamStyle images; "
            "set --camstyle=false")


def camstyle_views(dataset: ReidDataset) -> tuple[tuple[str, ...], ...]:
    """For each training image, its file in the style of each camera (itself for its own camera).

    A copy missing from the folder is replaced by the original image, with one warning giving
    the count; copies of images that are not training samples are ignored, with a warning.

    Args:
        dataset: a market1501 or dukemtmc dataset; its root holds bounding_box_train/.

    Returns:
        (N, num_cameras) paths: row i belongs to dataset.train[i], column s is camera s's style.

    Raises:
        DatasetError: another dataset, a missing folder, a name that is not a CamStyle copy, a
            copy whose source camera differs from its source image's or whose style camera is
            out of range, or a folder holding no copy of any training image.
    """
    refuse_unsupported(dataset.name)
    folder = os.path.join(dataset.root, CAMSTYLE_FOLDER)
    if not os.path.isdir(folder):
        raise DatasetError(f"{dataset.name}: --camstyle needs the folder {folder!r}, which does "
                           f"not exist (download it from ECN). Expected layout:\n{LAYOUT}")
    slots = {os.path.basename(s.path): i for i, s in enumerate(dataset.train)}
    views = [[s.path] * dataset.num_cameras for s in dataset.train]
    bad, orphans, found = [], 0, 0
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.name.endswith(".jpg"):  # stray files such as Thumbs.db
            continue
        parsed = parse_copy_name(entry.name)
        if parsed is None:
            bad.append(entry.name)
            continue
        source, source_cam, style_cam = parsed
        if source not in slots:
            orphans += 1
            continue
        sample = dataset.train[slots[source]]
        if source_cam != sample.camid or not 0 <= style_cam < dataset.num_cameras \
                or style_cam == sample.camid:
            raise DatasetError(
                f"{dataset.name}: CamStyle copy {entry.path!r} does not fit its source "
                f"{sample.path!r} of camera c{sample.camid + 1}: the name must read "
                f"<stem>_fake_{sample.camid + 1}to<s>.jpg with s another camera in "
                f"1..{dataset.num_cameras}.")
        views[slots[source]][style_cam] = entry.path
        found += 1
    if bad:
        raise DatasetError(
            f"{dataset.name}: {len(bad)} file name(s) in {folder!r} do not read "
            f"'<stem>_fake_<c>to<s>.jpg' (e.g. {', '.join(bad[:3])}). Expected layout:\n{LAYOUT}")
    if not found:
        raise DatasetError(f"{dataset.name}: {folder!r} holds no CamStyle copy of any training "
                           f"image. Expected layout:\n{LAYOUT}")
    if orphans:
        logging.warning("%s: ignored %d CamStyle copies of images that are not training samples.",
                        dataset.name, orphans)
    expected = len(dataset.train) * (dataset.num_cameras - 1)
    if found < expected:
        logging.warning("%s: %d of %d CamStyle copies are missing in %s; the original image "
                        "stands in for each.", dataset.name, expected - found, expected, folder)
    return tuple(tuple(row) for row in views)


def with_camstyle(dataset: ReidDataset) -> ReidDataset:
    """The dataset with its `camstyle` views filled in (see camstyle_views)."""
    return dataclasses.replace(dataset, camstyle=camstyle_views(dataset))
