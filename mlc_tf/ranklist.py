"""Rank-list pictures: each query beside its top gallery matches, framed green (true) or red."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from mlc_tf import evaluation

GREEN = (0, 170, 0)
RED = (220, 0, 0)
QUERY_FRAME = (60, 60, 60)
FRAME = 3  # frame width in pixels, drawn over the picture's border
GAP = 6  # white space around and between pictures; three gaps after the query


def choose_queries(num_total: int, count: int) -> np.ndarray:
    """Indices of `count` queries spread evenly over 0..num_total-1 (all if fewer)."""
    return np.unique(np.linspace(0, num_total - 1, min(count, num_total)).round().astype(int))


def _cell(path: str, cell_size: tuple[int, int], colour: tuple[int, int, int]) -> np.ndarray:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(image, cell_size, antialias=True)
    cell = np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8)
    cell[:FRAME], cell[-FRAME:], cell[:, :FRAME], cell[:, -FRAME:] = (colour,) * 4
    return cell


def ranklist_image(query_path: str, query_pid: int, match_paths: Sequence[str | None],
                   match_pids: Sequence[int], cell_size: tuple[int, int] = (128, 64)) -> np.ndarray:
    """One row: the query, a wider gap, then the matches in rank order.

    Args:
        query_path: the query image file.
        query_pid: its identity, which decides each match's frame colour.
        match_paths: gallery image files, nearest first; None leaves that cell blank.
        match_pids: their identities.
        cell_size: (height, width) of each picture.

    Returns:
        uint8 (cell height + 2 GAP, (1 + len(match_paths)) * cell width + (len + 4) * GAP, 3)
        on a white background.
    """
    height, width = cell_size
    num_matches = len(match_paths)
    canvas = np.full((height + 2 * GAP, (1 + num_matches) * width + (num_matches + 4) * GAP, 3),
                     255, np.uint8)
    canvas[GAP:GAP + height, GAP:GAP + width] = _cell(query_path, cell_size, QUERY_FRAME)
    x = GAP + width + 3 * GAP
    for path, pid in zip(match_paths, match_pids):
        if path is not None:
            colour = GREEN if pid == query_pid else RED
            canvas[GAP:GAP + height, x:x + width] = _cell(path, cell_size, colour)
        x += width + GAP
    return canvas


def write_ranklists(out_dir: str, distances: np.ndarray, query_samples: Sequence,
                    gallery_samples: Sequence, *, topk: int = 10,
                    cell_size: tuple[int, int] = (128, 64)) -> list[str]:
    """Writes one PNG per query: the query and its top-k gallery matches.

    Same-pid-same-camera gallery items are left out, as in the evaluation. Only the rows of the
    queries to draw are needed, so this works beside the streaming evaluator: pass
    pairwise_distance(query_features[chosen], gallery_features) (or rows of a re-ranked matrix)
    with [query[i] for i in chosen].

    Args:
        out_dir: folder for the PNGs (created if missing).
        distances: (n, G) distances of the n queries to the whole gallery.
        query_samples: n objects with .path, .pid and .camid (datasets.Sample).
        gallery_samples: G such objects.
        topk: matches per query.
        cell_size: (height, width) of each picture.

    Returns:
        The written paths, '<out_dir>/<row:03d>_<query file stem>.png', in row order.

    Raises:
        ValueError: distances does not have one row per query and one column per gallery item.
    """
    distances = np.asarray(distances)
    if distances.shape != (len(query_samples), len(gallery_samples)):
        raise ValueError(f"distances {distances.shape} must be ({len(query_samples)}, "
                         f"{len(gallery_samples)}): one row per query to draw")
    top = evaluation.top_matches(
        distances, [q.pid for q in query_samples], [q.camid for q in query_samples],
        [g.pid for g in gallery_samples], [g.camid for g in gallery_samples], topk)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for row, (query, indices) in enumerate(zip(query_samples, top)):
        matches = [gallery_samples[g] if g >= 0 else None for g in indices]
        picture = ranklist_image(query.path, query.pid, [m.path if m else None for m in matches],
                                 [m.pid if m else None for m in matches], cell_size)
        stem = os.path.splitext(os.path.basename(query.path))[0]
        path = os.path.join(out_dir, f"{row:03d}_{stem}.png")
        tf.io.write_file(path, tf.io.encode_png(picture))
        written.append(path)
    return written
