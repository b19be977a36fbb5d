"""Feature files: an export's features of images as .npz (bin/extract), and scoring two of them."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from mlc_tf import export
from mlc_tf import features
from mlc_tf.data import datasets
from mlc_tf.data import folder


def list_images(images: str) -> list[str]:
    """The images a folder or a list file names, for bin/extract.

    Args:
        images: a folder (its JPEG and PNG files at any depth, sorted by relative path) or a
            text file of one image path per line (blank lines skipped; relative paths are
            relative to the list file's folder).

    Returns:
        The image paths, in that order.

    Raises:
        FileNotFoundError: images does not exist, or listed files are missing (a few named).
        ValueError: no images.
    """
    if os.path.isdir(images):
        paths = folder.find_images(images)
    elif os.path.isfile(images):
        base = os.path.dirname(images)
        with open(images) as handle:
            paths = [os.path.join(base, line.strip()) for line in handle if line.strip()]
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) listed in {images} are missing "
                                    f"(e.g. {', '.join(missing[:3])})")
    else:
        raise FileNotFoundError(f"{images} is neither a folder nor a list file")
    if not paths:
        raise ValueError(f"no JPEG or PNG images in {images}")
    return paths


def extract_to_file(saved_model: str, images: str, output: str, *, batch_size: int = 128,
                    progress: bool = True) -> int:
    """What bin/extract does: features of images by an export, written to an .npz file.

    The file holds 'features' float32 (N, D) (unit rows), 'paths' (N,) str, 'metadata' (the
    export's metadata as a JSON string) and 'saved_model' (its absolute path). It is written
    to a temporary name and renamed, so a failure leaves no partial file.

    Args:
        saved_model: an export of mlc_tf.export.
        images: a folder or a list file, as list_images.
        output: the .npz file to write (its folder is created).
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        N, the number of images.

    Raises:
        OSError, ValueError: an unreadable export, missing images, or an export without an
            image_size in its metadata.
    """
    extractor = export.load_feature_extractor(saved_model)
    image_size = extractor.metadata.get("image_size")
    if image_size is None:
        raise ValueError(f"{saved_model} has no image_size in its {export.METADATA_FILE}; "
                         "export it with mlc_tf.export")
    paths = list_images(images)
    vectors = features.extract_features(extractor, paths, image_size=image_size, batch_size=batch_size,
                               progress=progress)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    staging = f"{output}.tmp-{os.getpid()}"
    try:
        with open(staging, "wb") as handle:  # a handle, so that numpy adds no .npz suffix
            np.savez(handle, features=vectors, paths=np.array(paths, np.str_),
                     metadata=np.array(json.dumps(extractor.metadata, sort_keys=True)),
                     saved_model=np.array(os.path.abspath(saved_model)))
        os.replace(staging, output)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    return len(paths)


@dataclasses.dataclass(frozen=True)
class FeatureFile:
    """The contents of a file written by extract_to_file.

    Attributes:
        features: float32 (N, D).
        paths: the N image paths.
        metadata: the export's metadata.
        saved_model: the export's path when it was extracted.
    """

    features: np.ndarray
    paths: tuple[str, ...]
    metadata: dict
    saved_model: str


def load_feature_file(path: str) -> FeatureFile:
    """Reads a file written by extract_to_file.

    Raises:
        OSError: an unreadable file.
        ValueError: not such a file (a missing entry, or features and paths that disagree).
    """
    with np.load(path, allow_pickle=False) as contents:
        missing = [key for key in ("features", "paths", "metadata", "saved_model")
                   if key not in contents]
        if missing:
            raise ValueError(f"{path} is not a bin/extract feature file (no "
                             f"{', '.join(missing)})")
        vectors, paths = contents["features"], contents["paths"]
        metadata, saved_model = str(contents["metadata"]), str(contents["saved_model"])
    if vectors.ndim != 2 or paths.shape != (len(vectors),):
        raise ValueError(f"{path}: features {vectors.shape} and paths {paths.shape} disagree")
    return FeatureFile(vectors.astype(np.float32), tuple(paths.tolist()), json.loads(metadata),
                       saved_model)


def _market_samples(stored: FeatureFile, source: str) -> tuple[np.ndarray, list]:
    """(rows kept, Samples) of a feature file's paths parsed as Market names, junk dropped."""
    rows, samples, bad = [], [], []
    for row, path in enumerate(stored.paths):
        parsed = datasets.parse_market_name(os.path.basename(path))
        if parsed is None or parsed[1] < 1:
            bad.append(os.path.basename(path))
        elif parsed[0] != datasets.JUNK_PID:
            rows.append(row)
            samples.append(datasets.Sample(path, parsed[0], parsed[1] - 1))
    if bad:
        raise ValueError(f"{len(bad)} image name(s) in {source} do not parse as Market-style "
                         f"'<pid>_c<camera >= 1>...' (e.g. {', '.join(bad[:3])})")
    if not samples:
        raise ValueError(f"{source} holds only junk (pid -1) images")
    return np.array(rows), samples


def evaluate_feature_files(query_file: str, gallery_file: str, *, metric: str = "euclidean",
                           rerank: bool = False, output_json: str | None = None,
                           ranklist_dir: str | None = None, num_ranklists: int = 20) -> dict:
    """bin/evaluate on two extract_to_file files: ids and cameras from the Market-style names.

    Images of pid -1 (junk) are dropped, as the Market readers drop them, so this scores
    features extracted from a dataset's query and gallery as evaluate_export scores the
    dataset.

    Args:
        query_file, gallery_file: files written by extract_to_file with the same export.
        metric, rerank, output_json, ranklist_dir, num_ranklists: as evaluate_export.

    Returns:
        evaluate_export's summary, with dataset 'feature files', the export's saved_model and
        the two files as query_features and gallery_features.

    Raises:
        OSError, ValueError: unreadable files, names that do not parse, or files of different
            exports or feature sizes.
    """
    if not (query_file and gallery_file):
        raise ValueError("evaluating feature files needs both a query and a gallery file")
    query_stored, gallery_stored = load_feature_file(query_file), load_feature_file(gallery_file)
    if (query_stored.metadata != gallery_stored.metadata
            or query_stored.features.shape[1] != gallery_stored.features.shape[1]):
        raise ValueError(f"{query_file} and {gallery_file} were extracted by different exports "
                         f"(metadata or feature sizes differ)")
    query_rows, query_samples = _market_samples(query_stored, query_file)
    gallery_rows, gallery_samples = _market_samples(gallery_stored, gallery_file)
    scored = features.score(query_stored.features[query_rows],
                            gallery_stored.features[gallery_rows], query_samples,
                            gallery_samples, metric=metric, rerank=rerank)
    summary = {"dataset": "feature files", "saved_model": query_stored.saved_model,
               "query_features": os.path.abspath(query_file),
               "gallery_features": os.path.abspath(gallery_file),
               "metric": "euclidean" if rerank else metric, "rerank": rerank}
    return features.report(scored, summary, query_samples, gallery_samples,
                           output_json=output_json, ranklist_dir=ranklist_dir,
                           num_ranklists=num_ranklists)
