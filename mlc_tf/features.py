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
from mlc_tf import console
from mlc_tf import evaluation
from mlc_tf import export
from mlc_tf import ranklist
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
                     batch_size: int = 128, progress: bool = False,
                     progress_label: str = "features") -> np.ndarray:
    """Features of the images at paths, in order, without augmentation.

    Images are decoded, resized to image_size and rounded to uint8, which is what the
    export's serving signature takes, so a network and its export see the same pixels.

    Args:
        extractor: maps uint8 (B, H, W, 3) to (B, D): make_embedder's function or an
            mlc_tf.export.FeatureExtractor.
        paths: image files.
        image_size: (height, width).
        batch_size: images per call.
        progress: show a progress bar (console.ProgressBar).
        progress_label: what the progress bar's line starts with.

    Returns:
        float32 (len(paths), D).

    Raises:
        ValueError: paths is empty.
    """
    if not len(paths):
        raise ValueError("no images to extract features from")
    batches = pipeline.make_eval_dataset(list(paths), tuple(image_size), batch_size)
    chunks = []
    with console.ProgressBar(len(paths), progress_label, unit="image", enabled=progress) as bar:
        for images in iteration.iterate(batches):
            chunks.append(np.asarray(extractor(images), np.float32))
            bar.add(len(chunks[-1]))
        bar.finish()
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


def score(query: np.ndarray, gallery: np.ndarray, query_samples: Sequence,
          gallery_samples: Sequence, *, metric: str = "euclidean",
          rerank: bool = False) -> Evaluation:
    """Scores query against gallery features with the Market protocol.

    Args:
        query, gallery: (Q, D) and (G, D) features.
        query_samples, gallery_samples: their datasets.Sample (pid and camera of each row).
        metric: 'euclidean' or 'cosine' (ignored with rerank, which re-ranks Euclidean).
        rerank: k-reciprocal re-ranking (holds the Q x G matrix in memory).

    Returns:
        the Evaluation ('seconds' is the scoring time).
    """
    start = time.time()
    labels = dict(q_pids=np.array([s.pid for s in query_samples]),
                  g_pids=np.array([s.pid for s in gallery_samples]),
                  q_camids=np.array([s.camid for s in query_samples]),
                  g_camids=np.array([s.camid for s in gallery_samples]))
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


def evaluate(extractor: Callable, dataset, *, image_size: Sequence[int], batch_size: int = 128,
             metric: str = "euclidean", rerank: bool = False, progress: bool = False,
             extract: Callable[..., np.ndarray] | None = None) -> Evaluation:
    """Extracts query and gallery features and scores them with the Market protocol.

    Args:
        extractor: as extract_features.
        dataset: an mlc_tf ReidDataset (its query and gallery splits are used).
        image_size: (height, width) fed to the extractor.
        batch_size: images per call.
        metric, rerank: as score.
        progress: progress bars.
        extract: extract_features (the default) or a function of its signature, such as
            multi_worker.extract_split's share of the work.

    Returns:
        the Evaluation ('seconds' includes the extraction).
    """
    start = time.time()
    extract = extract or extract_features
    query = extract(extractor, [s.path for s in dataset.query], image_size=image_size,
                    batch_size=batch_size, progress=progress, progress_label="query")
    gallery = extract(extractor, [s.path for s in dataset.gallery], image_size=image_size,
                      batch_size=batch_size, progress=progress, progress_label="gallery")
    scored = score(query, gallery, dataset.query, dataset.gallery, metric=metric, rerank=rerank)
    return dataclasses.replace(scored, metrics={**scored.metrics,
                                                "seconds": time.time() - start})


def report(scored: Evaluation, summary: dict, query_samples: Sequence,
           gallery_samples: Sequence, *, output_json: str | None = None,
           ranklist_dir: str | None = None, num_ranklists: int = 20) -> dict:
    """bin/evaluate's summary of an Evaluation, optionally written as JSON and rank lists.

    Args:
        scored: what score or evaluate returned.
        summary: the entries that say what was scored (dataset, saved_model, metric, rerank).
        query_samples, gallery_samples: the scored samples (rank lists show their images).
        output_json: write the summary here.
        ranklist_dir: write num_ranklists PNG rank lists here.
        num_ranklists: queries drawn, spread evenly.

    Returns:
        summary plus the headline metrics, num_valid_queries, num_query, num_gallery and
        the CMC curve.
    """
    summary = {**summary, **{k: v for k, v in scored.metrics.items() if k != "seconds"},
               "num_valid_queries": scored.result["num_valid_queries"],
               "num_query": len(query_samples), "num_gallery": len(gallery_samples),
               "cmc": scored.result["cmc"].tolist()}
    if output_json:
        with open(output_json, "w") as handle:
            json.dump(summary, handle, indent=2)
    if ranklist_dir:
        chosen = ranklist.choose_queries(len(query_samples), num_ranklists)
        rows = (scored.distances[chosen] if scored.distances is not None else
                evaluation.pairwise_distance(scored.query[chosen], scored.gallery,
                                             summary["metric"]))
        ranklist.write_ranklists(ranklist_dir, rows, [query_samples[i] for i in chosen],
                                 gallery_samples)
    return summary


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
    summary = {"dataset": dataset_name, "saved_model": os.path.abspath(saved_model),
               "metric": "euclidean" if rerank else metric, "rerank": rerank}
    return report(scored, summary, dataset.query, dataset.gallery, output_json=output_json,
                  ranklist_dir=ranklist_dir, num_ranklists=num_ranklists)


def format_metrics(metrics: dict) -> str:
    """One line of the headline metrics in percent, and the seconds when known.

    Args:
        metrics: mAP, rank1, rank5, rank10, mINP as fractions; optionally seconds.
    """
    line = ", ".join(f"{name} {100 * metrics[key]:.2f}%" for name, key in (
        ("mAP", "mAP"), ("rank-1", "rank1"), ("rank-5", "rank5"), ("rank-10", "rank10"),
        ("mINP", "mINP")))
    return f"{line} ({metrics['seconds']:.1f} s)" if "seconds" in metrics else line


def format_summary(summary: dict) -> str:
    """The lines bin/evaluate prints: sizes, then mAP, rank-1/5/10 and mINP in percent."""
    names = ("mAP", "rank1", "rank5", "rank10", "mINP")
    return "\n".join([
        f"{summary['dataset']}: {summary['num_valid_queries']} valid queries x "
        f"{summary['num_gallery']} gallery images{', re-ranked' if summary['rerank'] else ''}",
        " ".join(f"{name:>8}" for name in ("mAP", "rank-1", "rank-5", "rank-10", "mINP")),
        " ".join(f"{100 * summary[name]:7.2f}%" for name in names)])
