"""Parsers of Market-1501, DukeMTMC-reID and MSMT17 in their on-disk layouts."""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Sequence
from typing import BinaryIO

from absl import logging

# Person id then camera number, e.g. "0001_c1s1_001051_00.jpg" or "-1_c3s2_000123_01.jpg".
_NAME_PATTERN = re.compile(r"([-\d]+)_c(\d+)")
JUNK_PID = -1  # Market's junk images (bad detections), dropped from every split
# Bytes read from the end of a file to look for the JPEG end-of-image marker: encoders may pad.
_TAIL_BYTES = 64
_SOS, _EOI = 0xDA, 0xD9
_MSMT_CAMERAS = 15
# Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8, CC are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

MARKET_LAYOUT = """<data_dir>/Market-1501-v15.09.15/ (or Market-1501/, market1501/, data_dir itself)
    bounding_box_train/PPPP_cCsS_FFFFFF_BB.jpg   training images
    query/PPPP_cCsS_FFFFFF_BB.jpg                query images
    bounding_box_test/PPPP_cCsS_FFFFFF_BB.jpg    gallery (pid -1 = junk, dropped; 0 = distractor)"""

DUKE_LAYOUT = """<data_dir>/DukeMTMC-reID/   (or dukemtmc-reid/, dukemtmc/, or data_dir itself)
    bounding_box_train/PPPP_cC_fFFFFFFF.jpg   training images
    query/PPPP_cC_fFFFFFFF.jpg                query images
    bounding_box_test/PPPP_cC_fFFFFFFF.jpg    gallery"""

MSMT_LAYOUT = """one of (under <data_dir>, or data_dir itself):
  V1  MSMT17_V1/ with train/ test/ list_train.txt list_val.txt list_query.txt list_gallery.txt
  V2  MSMT17_V2/ with mask_train_v2/ mask_test_v2/ and the same four list files
      (list lines: '<path relative to the image folder> <pid>', names PPPP_III_CC_...jpg)
  repack  MSMT17/ (or msmt17/) with bounding_box_train/ bounding_box_test/ query/,
          names PPPP_cC_*.jpg"""

_MARKET_SPLITS = (("train", "bounding_box_train"), ("query", "query"),
                  ("gallery", "bounding_box_test"))


class DatasetError(ValueError):
    """A dataset folder is missing, laid out wrongly, empty or holds unreadable images."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image: its path, person id (never used for unsupervised training) and 0-based camera."""

    path: str
    pid: int
    camid: int


@dataclasses.dataclass(frozen=True)
class ReidDataset:
    """Train / query / gallery splits; the index of a sample in `train` is its memory slot.

    `camstyle`, when read (mlc_tf.data.camstyle), holds for each training image its file in the
    style of each camera: (len(train), num_cameras) paths, the image itself at its own camera.
    """

    name: str
    root: str
    train: tuple[Sample, ...]
    query: tuple[Sample, ...]
    gallery: tuple[Sample, ...]
    num_cameras: int
    skipped: int = 0
    camstyle: tuple[tuple[str, ...], ...] = ()


def _locate(name: str, data_dir: str, candidates: Sequence[str], marker: str,
            layout: str) -> str:
    """The dataset folder: a known sub-folder of data_dir, or data_dir itself if it holds marker."""
    if not os.path.isdir(data_dir):
        raise DatasetError(
            f"{name}: data_dir {data_dir!r} does not exist. Expected layout:\n{layout}")
    for candidate in candidates:
        folder = os.path.join(data_dir, candidate)
        if os.path.isdir(folder):
            return folder
    if os.path.isdir(os.path.join(data_dir, marker)):
        return data_dir
    raise DatasetError(f"{name}: no dataset folder found in {data_dir!r} (looked for "
                       f"{', '.join(candidates)} or {marker}/ in data_dir). "
                       f"Expected layout:\n{layout}")


def _empty_split(name: str, split: str, where: str, layout: str) -> DatasetError:
    """The error for a split with no usable images, saying where we looked."""
    return DatasetError(f"{name}: the {split} split is empty ({where}). Expected layout:\n{layout}")


def parse_market_name(file_name: str) -> tuple[int, int] | None:
    """(pid, camera number as written, 1-based) of a Market-style name, or None if it has none.

    Args:
        file_name: a base name such as '0001_c1s1_001051_00.jpg' or '-1_c3_f0001.png'.
    """
    match = _NAME_PATTERN.search(file_name)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def parse_market_folder(name: str, folder: str, split: str, layout: str,
                        num_cameras: int | None = None) -> list[Sample]:
    """Samples of one Market-style folder, sorted by path, junk (pid -1) dropped.

    Args:
        name: dataset name, for error messages.
        folder: folder of `PPPP_cC*.jpg` files.
        split: 'train', 'query' or 'gallery', for error messages.
        layout: expected layout, quoted in error messages.
        num_cameras: if given, camera numbers must lie in 1..num_cameras.

    Returns:
        The samples with 0-based camids.

    Raises:
        DatasetError: missing folder, no images, names that do not parse, camera out of range.
    """
    if not os.path.isdir(folder):
        raise DatasetError(f"{name}: missing folder {folder!r} for the {split} split. "
                           f"Expected layout:\n{layout}")
    # Only *.jpg: Market folders hold stray files such as Thumbs.db.
    paths = sorted(glob.glob(os.path.join(glob.escape(folder), "*.jpg")))
    if not paths:
        raise _empty_split(name, split, f"no *.jpg files in {folder!r}", layout)
    samples, bad = [], []
    for path in paths:
        parsed = parse_market_name(os.path.basename(path))
        if parsed is None:
            bad.append(os.path.basename(path))
            continue
        pid, cam = parsed
        if cam < 1 or (num_cameras is not None and cam > num_cameras):
            limit = f"1..{num_cameras}" if num_cameras else ">= 1"
            raise DatasetError(f"{name}: camera c{cam} of {path!r} is out of range ({limit}).")
        if pid != JUNK_PID:
            samples.append(Sample(path, pid, cam - 1))
    if bad:
        raise DatasetError(
            f"{name}: {len(bad)} file name(s) in {folder!r} do not parse as "
            f"'<pid>_c<camera>...jpg' (e.g. {', '.join(bad[:3])}). Expected layout:\n{layout}")
    if not samples:
        raise _empty_split(name, split, f"only junk (pid -1) images in {folder!r}", layout)
    return samples


def _frame_size(f: BinaryIO) -> tuple[int, int] | None:
    """(height, width) from the JPEG frame header, walking segment headers only; None if absent.

    Reading a few bytes per segment keeps a check of MSMT17's 126k images to seconds, where a
    full decode would take minutes; it still catches a damaged or missing header.
    """
    f.seek(2)
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        while marker[1] == 0xFF:  # fill bytes before a marker
            marker = marker[1:] + f.read(1)
            if len(marker) < 2:
                return None
        kind = marker[1]
        if kind == _SOS or kind == _EOI:  # image data or end reached without a frame header
            return None
        if 0xD0 <= kind <= 0xD7 or kind == 0x01:  # restart markers and TEM carry no length
            continue
        header = f.read(2)
        if len(header) < 2 or int.from_bytes(header, "big") < 2:
            return None
        length = int.from_bytes(header, "big")
        if kind in _SOF_MARKERS:
            frame = f.read(5)  # precision, height, width
            if len(frame) < 5:
                return None
            return int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
        f.seek(length - 2, os.SEEK_CUR)


def _check_image(path: str) -> str | None:
    """Why `path` is not a readable JPEG (empty, unreadable, bad header, truncated) or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
            frame = _frame_size(f) if head == b"\xff\xd8" else None
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    if size == 0:
        return "empty file"
    if head != b"\xff\xd8":
        return "not a JPEG (no start-of-image marker)"
    if frame is None:
        return "corrupt JPEG header (no frame header before the image data)"
    if min(frame) == 0:
        return f"corrupt JPEG header (image size {frame[0]}x{frame[1]})"
    if b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    return None


def _verify(name: str, splits: dict[str, list[Sample]], verify_images: bool,
            skip_corrupt: bool) -> tuple[dict[str, list[Sample]], int]:
    """Checks every image when asked; drops bad ones with a warning when skip_corrupt is set."""
    if not (verify_images or skip_corrupt):
        return splits, 0
    kept, skipped = {}, 0
    for split, samples in splits.items():
        kept[split] = []
        for sample in samples:
            problem = _check_image(sample.path)
            if problem is None:
                kept[split].append(sample)
            elif skip_corrupt:
                logging.warning("%s: skipping corrupt image %s: %s", name, sample.path, problem)
                skipped += 1
            else:
                raise DatasetError(f"{name}: corrupt image {sample.path!r}: {problem} "
                                   "(pass skip_corrupt=True to skip such files).")
        if not kept[split]:
            raise DatasetError(f"{name}: the {split} split is empty after skipping corrupt images.")
    if skipped:
        logging.warning("%s: skipped %d corrupt image(s).", name, skipped)
    return kept, skipped


def _finish(name: str, root: str, splits: dict[str, list[Sample]], num_cameras: int | None,
            verify_images: bool, skip_corrupt: bool) -> ReidDataset:
    """Verifies (if asked), sorts each split by path and builds the dataset."""
    splits, skipped = _verify(name, splits, verify_images, skip_corrupt)
    if num_cameras is None:
        num_cameras = 1 + max(s.camid for samples in splits.values() for s in samples)
    return ReidDataset(
        name=name, root=root, num_cameras=num_cameras, skipped=skipped,
        **{split: tuple(sorted(samples, key=lambda s: s.path))
           for split, samples in splits.items()})


def parse_market_layout(name: str, root: str, layout: str = MARKET_LAYOUT,
                        num_cameras: int | None = None, verify_images: bool = False,
                        skip_corrupt: bool = False) -> ReidDataset:
    """Parses a folder holding bounding_box_train/, query/ and bounding_box_test/.

    Args:
        name: dataset name stored in the result.
        root: the dataset folder.
        layout: expected layout, quoted in error messages.
        num_cameras: camera count; None = the largest camera seen.
        verify_images: check that every file is a non-empty JPEG with a start-of-image marker,
            a frame header giving a non-zero size, and an end-of-image marker.
        skip_corrupt: skip (and count) bad images with a warning instead of raising; implies
            verify_images.

    Returns:
        The dataset, each split sorted by path.

    Raises:
        DatasetError: wrong layout, empty split, bad file names or corrupt images.
    """
    splits = {split: parse_market_folder(name, os.path.join(root, folder), split, layout,
                                         num_cameras)
              for split, folder in _MARKET_SPLITS}
    return _finish(name, root, splits, num_cameras, verify_images, skip_corrupt)


def read_market1501(data_dir: str, **options) -> ReidDataset:
    """Market-1501 (6 cameras) in data_dir or a known sub-folder; options of parse_market_layout."""
    root = _locate("market1501", data_dir, ("Market-1501-v15.09.15", "Market-1501", "market1501"),
                   "bounding_box_train", MARKET_LAYOUT)
    return parse_market_layout("market1501", root, MARKET_LAYOUT, 6, **options)


def read_dukemtmc(data_dir: str, **options) -> ReidDataset:
    """DukeMTMC-reID (8 cameras) in data_dir or a sub-folder; options of parse_market_layout."""
    root = _locate("dukemtmc", data_dir, ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmc"),
                   "bounding_box_train", DUKE_LAYOUT)
    return parse_market_layout("dukemtmc", root, DUKE_LAYOUT, 8, **options)


def _read_list(name: str, list_path: str, image_dir: str, split: str) -> list[Sample]:
    """Samples of an MSMT17 list file: pid from the line, camera from the name's third field."""
    if not os.path.isfile(list_path):
        raise DatasetError(
            f"{name}: missing list file {list_path!r}. Expected layout:\n{MSMT_LAYOUT}")
    samples, missing = [], []
    with open(list_path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            base = os.path.basename(fields[0])
            parts = base.split("_")
            if (len(fields) != 2 or not re.fullmatch(r"-?\d+", fields[1])
                    or len(parts) < 3 or not parts[2].isdigit()):
                raise DatasetError(
                    f"{name}: line {number} of {list_path!r} does not read "
                    f"'<relative path> <pid>' with a name PPPP_III_CC_...jpg: {line.strip()!r}")
            if not 1 <= int(parts[2]) <= _MSMT_CAMERAS:
                raise DatasetError(f"{name}: camera {parts[2]} of {base!r} (line {number} of "
                                   f"{list_path!r}) is out of range (1..{_MSMT_CAMERAS}).")
            path = os.path.join(image_dir, fields[0])
            if not os.path.isfile(path):
                missing.append(path)
            samples.append(Sample(path, int(fields[1]), int(parts[2]) - 1))
    if missing:
        raise DatasetError(f"{name}: {len(missing)} image(s) listed in {list_path!r} are missing "
                           f"(e.g. {', '.join(missing[:3])}). Expected layout:\n{MSMT_LAYOUT}")
    if not samples:
        raise _empty_split(name, split, f"{list_path!r} lists no images", MSMT_LAYOUT)
    return samples


def _msmt_version(folder: str) -> str | None:
    """'V1', 'V2', 'repack' or None, by which image folders `folder` holds."""
    if os.path.isdir(os.path.join(folder, "mask_train_v2")):
        return "V2"
    if os.path.isdir(os.path.join(folder, "train")):
        return "V1"
    if os.path.isdir(os.path.join(folder, "bounding_box_train")):
        return "repack"
    return None


def read_msmt17(data_dir: str, verify_images: bool = False,
                skip_corrupt: bool = False) -> ReidDataset:
    """MSMT17 V2, V1 or the Market-style repack, whichever is found first; 15 cameras."""
    name = "msmt17"
    if not os.path.isdir(data_dir):
        raise DatasetError(f"{name}: data_dir {data_dir!r} does not exist. Expected layout:\n"
                           f"{MSMT_LAYOUT}")
    candidates = [os.path.join(data_dir, c) for c in ("MSMT17_V2", "MSMT17_V1", "MSMT17", "msmt17")]
    present = [c for c in candidates if os.path.isdir(c)] or [data_dir]
    root = next((c for c in present if _msmt_version(c)), None)
    if root is None:
        raise DatasetError(f"{name}: no MSMT17 layout found in {', '.join(map(repr, present))} "
                           f"(no train/, mask_train_v2/ or bounding_box_train/ folder). "
                           f"Expected layout:\n{MSMT_LAYOUT}")
    version = _msmt_version(root)
    logging.info("%s: %s layout in %s", name, version, root)
    if version == "repack":
        return parse_market_layout(name, root, MSMT_LAYOUT, _MSMT_CAMERAS, verify_images,
                                   skip_corrupt)
    train_dir, test_dir = (("train", "test") if version == "V1" else
                           ("mask_train_v2", "mask_test_v2"))
    train_dir, test_dir = os.path.join(root, train_dir), os.path.join(root, test_dir)
    if not os.path.isdir(test_dir):
        raise DatasetError(f"{name}: missing folder {test_dir!r} ({version} layout). "
                           f"Expected layout:\n{MSMT_LAYOUT}")
    # Unsupervised training uses train + val, as SpCL does (32,621 images).
    splits = {
        "train": (_read_list(name, os.path.join(root, "list_train.txt"), train_dir, "train")
                  + _read_list(name, os.path.join(root, "list_val.txt"), train_dir, "train")),
        "query": _read_list(name, os.path.join(root, "list_query.txt"), test_dir, "query"),
        "gallery": _read_list(name, os.path.join(root, "list_gallery.txt"), test_dir, "gallery"),
    }
    return _finish(name, root, splits, _MSMT_CAMERAS, verify_images, skip_corrupt)
