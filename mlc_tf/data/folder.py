"""Unlabelled person crops in any folder tree, with optional cameras and query/gallery."""

from __future__ import annotations

import os
import re

from mlc_tf.data import datasets
from mlc_tf.data.datasets import DatasetError, ReidDataset, Sample

NAME = "folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # matched case-insensitively
EVAL_FOLDERS = ("query", "gallery")
UNKNOWN_PID = -1
UNKNOWN_CAMERA = -1
CAMERA_HINT = ("give cameras with --dataset_options=camera_regex=REGEX (one group, on the file "
               "name) or --dataset_options=camera_from=subfolder")

LAYOUT = """<data_dir>/                     any tree of *.jpg, *.jpeg, *.png crops, any size
    **/*.jpg                     training images (everything outside query/ and gallery/)
    query/PPPP_cC*.jpg           optional, with gallery/: evaluation with Market-style names
    gallery/PPPP_cC*.jpg         (pid -1 = junk, dropped)
  cameras (optional): camera_regex=REGEX on the file name, or camera_from=subfolder
  (<data_dir>/<camera>/**/*.jpg)"""


def find_images(root: str) -> list[str]:
    """JPEG and PNG files under root, recursively, sorted by path relative to root.

    Args:
        root: a folder.

    Returns:
        Paths root/<relative path>, sorted by relative path.
    """
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        found.extend(os.path.relpath(os.path.join(folder, name), root) for name in files
                     if name.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(root, relative) for relative in sorted(found)]


def _camera_names(relatives: list[str], camera_regex: str | None,
                  camera_from: str | None) -> list[str] | None:
    """The camera name of each training image (relative path), or None without cameras."""
    if camera_regex is not None and camera_from is not None:
        raise DatasetError(f"{NAME}: give camera_regex or camera_from, not both")
    if camera_from is not None:
        if camera_from != "subfolder":
            raise DatasetError(f"{NAME}: camera_from must be 'subfolder', got {camera_from!r}")
        loose = [relative for relative in relatives if os.sep not in relative]
        if loose:
            raise DatasetError(f"{NAME}: camera_from=subfolder, but {loose[0]!r} lies directly in "
                               f"data_dir, not in a camera sub-folder. Expected layout:\n{LAYOUT}")
        return [relative.split(os.sep, 1)[0] for relative in relatives]
    if camera_regex is None:
        return None
    try:
        pattern = re.compile(camera_regex)
    except re.error as error:
        raise DatasetError(f"{NAME}: camera_regex {camera_regex!r} does not compile: "
                           f"{error}") from error
    if pattern.groups != 1:
        raise DatasetError(f"{NAME}: camera_regex {camera_regex!r} must have exactly one group "
                           f"(the camera), it has {pattern.groups}")
    names = []
    for relative in relatives:
        match = pattern.search(os.path.basename(relative))
        if match is None or match.group(1) is None:
            raise DatasetError(f"{NAME}: camera_regex {camera_regex!r} does not match the file "
                               f"name of {relative!r}")
        names.append(match.group(1))
    return names


def _camera_ids(names: list[str]) -> list[int]:
    """0-based ids of camera names in sorted order (numerically when all are integers)."""
    distinct = set(names)
    numeric = all(re.fullmatch(r"\d+", name) for name in distinct)
    order = sorted(distinct, key=int if numeric else str)
    ids = {name: camid for camid, name in enumerate(order)}
    return [ids[name] for name in names]


def _eval_split(root: str, split: str) -> list[Sample]:
    """Samples of query/ or gallery/ from their Market-style names, junk dropped."""
    folder = os.path.join(root, split)
    paths = find_images(folder)
    if not paths:
        raise DatasetError(f"{NAME}: {folder!r} holds no JPEG or PNG images. "
                           f"Expected layout:\n{LAYOUT}")
    samples, bad = [], []
    for path in paths:
        parsed = datasets.parse_market_name(os.path.basename(path))
        if parsed is None or parsed[1] < 1:
            bad.append(os.path.relpath(path, root))
        elif parsed[0] != datasets.JUNK_PID:
            samples.append(Sample(path, parsed[0], parsed[1] - 1))
    if bad:
        raise DatasetError(f"{NAME}: {len(bad)} file name(s) in {folder!r} do not parse as "
                           f"'<pid>_c<camera >= 1>...' (e.g. {', '.join(bad[:3])}). "
                           f"Expected layout:\n{LAYOUT}")
    if not samples:
        raise DatasetError(f"{NAME}: only junk (pid -1) images in {folder!r}")
    return samples


def read_folder(data_dir: str, camera_regex: str | None = None,
                camera_from: str | None = None) -> ReidDataset:
    """Reads unlabelled training crops and, if present, a labelled query/gallery split.

    Training images are every *.jpg, *.jpeg and *.png file (any case) under data_dir, at any
    depth, except those under the two top-level sub-folders data_dir/query/ and
    data_dir/gallery/ (a deeper folder named query/ holds training images). They are sorted by
    path relative to data_dir, which fixes each image's memory slot, and get pid -1 (unknown).
    Their camera is -1 (unknown) unless camera_regex or camera_from gives one; camera names
    map to 0-based ids in sorted order (numeric order when all names are integers).

    When data_dir/query/ and data_dir/gallery/ both exist, their images (at any depth) are the
    evaluation split, with pid and camera parsed from Market-style names (PPPP_cC...; pid -1
    is junk and dropped); their camera ids are their own, unrelated to the training cameras.

    Args:
        data_dir: the folder.
        camera_regex: a regular expression with one group, searched in each training image's
            file name; the group is the camera name. In --dataset_options, quote an item
            holding a comma (the list separator): '"camera_regex=c(\\d{1,2})"'.
        camera_from: 'subfolder': the first path component under data_dir is the camera.

    Returns:
        The dataset; query and gallery are empty without the two folders.

    Raises:
        DatasetError: a missing data_dir, no training images, only one of query/ and gallery/,
            bad camera options, a camera_regex that does not match a file name (named),
            or query/gallery names that do not parse.
    """
    if not os.path.isdir(data_dir):
        raise DatasetError(f"{NAME}: data_dir {data_dir!r} does not exist or is not a folder. "
                           f"Expected layout:\n{LAYOUT}")
    relatives = [os.path.relpath(path, data_dir) for path in find_images(data_dir)]
    relatives = [relative for relative in relatives
                 if relative.split(os.sep, 1)[0] not in EVAL_FOLDERS]
    if not relatives:
        raise DatasetError(f"{NAME}: no training images (*.jpg, *.jpeg, *.png outside query/ and "
                           f"gallery/) under {data_dir!r}. Expected layout:\n{LAYOUT}")
    names = _camera_names(relatives, None if camera_regex is None else str(camera_regex),
                          camera_from)
    camids = [UNKNOWN_CAMERA] * len(relatives) if names is None else _camera_ids(names)
    train = tuple(Sample(os.path.join(data_dir, relative), UNKNOWN_PID, camid)
                  for relative, camid in zip(relatives, camids))
    present = [split for split in EVAL_FOLDERS if os.path.isdir(os.path.join(data_dir, split))]
    if len(present) == 1:
        missing = next(split for split in EVAL_FOLDERS if split not in present)
        raise DatasetError(f"{NAME}: {present[0]}/ exists in {data_dir!r} but {missing}/ does "
                           f"not; evaluation needs both. Expected layout:\n{LAYOUT}")
    query, gallery = ((_eval_split(data_dir, "query"), _eval_split(data_dir, "gallery"))
                      if present else ((), ()))
    return ReidDataset(name=NAME, root=data_dir, train=train, query=tuple(query),
                       gallery=tuple(gallery), num_cameras=len(set(camids) - {UNKNOWN_CAMERA}))
