"""Feature extraction and query/gallery evaluation: the one path of training and bin/evaluate."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from mlc_tf import config as config_lib
from mlc_tf import evaluation
from mlc_tf import export
from mlc_tf import ranklist
from mlc_tf.data import datasets
from mlc_tf.data import folder
from mlc_tf.data import iteration
from mlc_tf.data import pipeline
from mlc_tf.data import registry


def make_embedder(model: keras.Model, feature: str = "pooled") -> Callable:
    """A tf.function mapping an image batch (uint8 or float in [0, 255]) to unit features.

    Args:
        model: network from model.build_model, run in inference mode.
        feature: the output to embed, 'pooled' or 'neck'.

    Returns:
        function (B, H, W, 3) -> float32 (B, D), L2-normalised rows.
    """

    @tf.function(reduce_retracing=True)
    def embed(images):
        outputs = model(tf.cast(images, tf.float32), training=False)
        return tf.math.l2_normalize(tf.cast(outputs[feature], tf.float32), axis=1)

    return embed


def extract_features(extractor: Callable, paths: Sequence[str], *, image_size: Sequence[int],
                     batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """Features of the images at paths, in order, without augmentation.

    Images are decoded, resized to image_size and rounded to uint8, which is what the
    export's serving signature takes, so a network and its export see the same pixels.

    Args:
        extractor: maps uint8 (B, H, W, 3) to (B, D): make_embedder's function or an
            mlc_tf.export.FeatureExtractor.
        paths: image files.
        image_size: (height, width).
        batch_size: images per call.
        progress: show a progress bar.

    Returns:
        float32 (len(paths), D).

    Raises:
        ValueError: paths is empty.
    """
    if not len(paths):
        raise ValueError("no images to extract features from")
    batches = pipeline.make_eval_dataset(list(paths), tuple(image_size), batch_size)
    bar = keras.utils.Progbar(len(paths), verbose=1 if progress else 0, unit_name="image")
    chunks = []
    for images in iteration.iterate(batches):
        chunks.append(np.asarray(extractor(images), np.float32))
        bar.add(len(chunks[-1]))
    return np.concatenate(chunks)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A query/gallery evaluation and the features it was computed from.

    Attributes:
        metrics: mAP, rank1, rank5, rank10, mINP and seconds (fractions in [0, 1]).
        result: everything evaluation.evaluate_* returned (cmc, num_valid_queries, ...).
        query, gallery: (Q, D) and (G, D) features.
        distances: the re-ranked (Q, G) distances, or None without re-ranking.
    """

    metrics: dict[str, float]
    result: dict
    query: np.ndarray
    gallery: np.ndarray
    distances: np.ndarray | None = None


def evaluate(extractor: Callable, dataset, *, image_size: Sequence[int], batch_size: int = 128,
             metric: str = "euclidean", rerank: bool = False,
             progress: bool = False) -> Evaluation:
    """Extracts query and gallery features and scores them with the Market protocol.

    Args:
        extractor: as extract_features.
        dataset: an mlc_tf ReidDataset (its query and gallery splits are used).
        image_size: (height, width) fed to the extractor.
        batch_size: images per call.
        metric: 'euclidean' or 'cosine' (ignored with rerank, which re-ranks Euclidean).
        rerank: k-reciprocal re-ranking (holds the Q x G matrix in memory).
        progress: progress bars.

    Returns:
        the Evaluation.
    """
    start = time.time()
    query = extract_features(extractor, [s.path for s in dataset.query], image_size=image_size,
                             batch_size=batch_size, progress=progress)
    gallery = extract_features(extractor, [s.path for s in dataset.gallery],
                               image_size=image_size, batch_size=batch_size, progress=progress)
    labels = dict(q_pids=np.array([s.pid for s in dataset.query]),
                  g_pids=np.array([s.pid for s in dataset.gallery]),
                  q_camids=np.array([s.camid for s in dataset.query]),
                  g_camids=np.array([s.camid for s in dataset.gallery]))
    distances = None
    if rerank:
        # Imported only when needed: the clustering package loads numba, seconds of start-up.
        from mlc_tf.clustering import rerank as rerank_lib
        distances = rerank_lib.rerank_distances(query, gallery)
        result = evaluation.evaluate_ranking(distances, **labels)
    else:
        result = evaluation.evaluate_features(query, gallery, **labels, metric=metric)
    metrics = {**evaluation.headline_metrics(result), "seconds": time.time() - start}
    return Evaluation(metrics, result, query, gallery, distances)


def evaluate_export(saved_model: str, dataset_name: str, data_dir: str,
                    dataset_options: Sequence[str] = (), *, batch_size: int = 128,
                    metric: str = "euclidean", rerank: bool = False,
                    output_json: str | None = None, ranklist_dir: str | None = None,
                    num_ranklists: int = 20, progress: bool = True) -> dict:
    """What bin/evaluate does: scores an export on a dataset, optionally writing JSON and PNGs.

    Args:
        saved_model: an export of mlc_tf.export.
        dataset_name, data_dir, dataset_options: the dataset (key=value options).
        batch_size, metric, rerank, progress: as evaluate.
        output_json: write the summary here.
        ranklist_dir: write num_ranklists PNG rank lists here.
        num_ranklists: queries drawn, spread evenly.

    Returns:
        the summary: dataset, saved_model, metric, rerank, the headline metrics,
        num_valid_queries, num_query, num_gallery and the CMC curve.

    Raises:
        OSError, KeyError, ValueError: an unreadable export or dataset (with the reason).
    """
    extractor = export.load_feature_extractor(saved_model)
    dataset = registry.create(dataset_name, data_dir,
                              **config_lib.parse_key_values(dataset_options))
    image_size = extractor.metadata.get("image_size")
    if image_size is None:
        raise ValueError(f"{saved_model} has no image_size in its {export.METADATA_FILE}; "
                         "export it with mlc_tf.export")
    scored = evaluate(extractor, dataset, image_size=image_size, batch_size=batch_size,
                      metric=metric, rerank=rerank, progress=progress)
    metrics = {name: value for name, value in scored.metrics.items() if name != "seconds"}
    summary = {"dataset": dataset_name, "saved_model": os.path.abspath(saved_model),
               "metric": "euclidean" if rerank else metric, "rerank": rerank, **metrics,
               "num_valid_queries": scored.result["num_valid_queries"],
               "num_query": len(dataset.query), "num_gallery": len(dataset.gallery),
               "cmc": scored.result["cmc"].tolist()}
    if output_json:
        with open(output_json, "w") as handle:
            json.dump(summary, handle, indent=2)
    if ranklist_dir:
        chosen = ranklist.choose_queries(len(dataset.query), num_ranklists)
        rows = (scored.distances[chosen] if rerank else
                evaluation.pairwise_distance(scored.query[chosen], scored.gallery, metric))
        ranklist.write_ranklists(ranklist_dir, rows, [dataset.query[i] for i in chosen],
                                 dataset.gallery)
    return summary


def format_summary(summary: dict) -> str:
    """The lines bin/evaluate prints: sizes, then mAP, rank-1/5/10 and mINP in percent."""
    names = ("mAP", "rank1", "rank5", "rank10", "mINP")
    return "\n".join([
        f"{summary['dataset']}: {summary['num_valid_queries']} valid queries x "
        f"{summary['num_gallery']} gallery images{', re-ranked' if summary['rerank'] else ''}",
        " ".join(f"{name:>8}" for name in ("mAP", "rank-1", "rank-5", "rank-10", "mINP")),
        " ".join(f"{100 * summary[name]:7.2f}%" for name in names)])


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
    vectors = extract_features(extractor, paths, image_size=image_size, batch_size=batch_size,
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
    query = query_stored.features[query_rows]
    gallery = gallery_stored.features[gallery_rows]
    labels = dict(q_pids=np.array([s.pid for s in query_samples]),
                  g_pids=np.array([s.pid for s in gallery_samples]),
                  q_camids=np.array([s.camid for s in query_samples]),
                  g_camids=np.array([s.camid for s in gallery_samples]))
    distances = None
    if rerank:
        from mlc_tf.clustering import rerank as rerank_lib  # numba loads only when needed
        distances = rerank_lib.rerank_distances(query, gallery)
        result = evaluation.evaluate_ranking(distances, **labels)
    else:
        result = evaluation.evaluate_features(query, gallery, **labels, metric=metric)
    summary = {"dataset": "feature files", "saved_model": query_stored.saved_model,
               "query_features": os.path.abspath(query_file),
               "gallery_features": os.path.abspath(gallery_file),
               "metric": "euclidean" if rerank else metric, "rerank": rerank,
               **evaluation.headline_metrics(result),
               "num_valid_queries": result["num_valid_queries"],
               "num_query": len(query_samples), "num_gallery": len(gallery_samples),
               "cmc": result["cmc"].tolist()}
    if output_json:
        with open(output_json, "w") as handle:
            json.dump(summary, handle, indent=2)
    if ranklist_dir:
        chosen = ranklist.choose_queries(len(query_samples), num_ranklists)
        rows = (distances[chosen] if rerank else
                evaluation.pairwise_distance(query[chosen], gallery, metric))
        ranklist.write_ranklists(ranklist_dir, rows, [query_samples[i] for i in chosen],
                                 gallery_samples)
    return summary
