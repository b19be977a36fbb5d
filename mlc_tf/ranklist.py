"""Rank-list pictures: each query beside its top gallery matches, framed green (true) or red.

A header line names the query, its identity and its AP; above each match is its rank, below it
its distance and identity. Distances all below 0.01 (features in a narrow cone) are written in
a power of ten the header names, so that they still differ in their digits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from mlc_tf import evaluation
from mlc_tf import pictures

GREEN = pictures.GREEN
RED = pictures.RED
QUERY_FRAME = (60, 60, 60)
GAP = pictures.GAP  # white space around and between pictures; three gaps after the query
LINE = pictures.LINE_HEIGHT
CELL_TOP = GAP + LINE + GAP + LINE  # the header line, then the rank line above the pictures


def choose_queries(num_total: int, count: int) -> np.ndarray:
    """Indices of `count` queries spread evenly over 0..num_total-1 (all if fewer)."""
    return np.unique(np.linspace(0, num_total - 1, min(count, num_total)).round().astype(int))


def picture_shape(num_matches: int, cell_size: tuple[int, int]) -> tuple[int, int, int]:
    """(height, width, 3) of ranklist_image's picture."""
    height, width = cell_size
    return (CELL_TOP + height + 2 * LINE + GAP,
            (1 + num_matches) * width + (num_matches + 4) * GAP, 3)


def cell_left(position: int, cell_size: tuple[int, int]) -> int:
    """Left pixel column of the picture at `position` (0 = query, k = rank k)."""
    width = cell_size[1]
    return GAP if position == 0 else GAP + width + 3 * GAP + (position - 1) * (width + GAP)


def average_precision(distances: np.ndarray, pid: int, camid: int, g_pids,
                      g_camids) -> float | None:
    """AP of one query under the evaluation's protocol, or None when it has no valid match.

    Args:
        distances: (G,) distances of the query to the gallery.
        pid, camid: the query's identity and camera.
        g_pids, g_camids: int (G,) gallery identities and cameras.
    """
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    if not np.any((g_pids == pid) & (g_camids != camid)):
        return None
    evaluator = evaluation.MarketEvaluator(g_pids, g_camids, max_rank=1)
    evaluator.add(np.asarray(distances)[None], [pid], [camid])
    return evaluator.result()["mAP"]


def distance_exponent(distances: Sequence[float | None]) -> int:
    """0, or the power of ten of the largest distance when it is below 0.01 (None ignored)."""
    largest = max((abs(d) for d in distances if d is not None), default=0.0)
    return 0 if largest == 0 or largest >= 0.01 else math.floor(math.log10(largest))


def ranklist_image(query_path: str, query_pid: int, match_paths: Sequence[str | None],
                   match_pids: Sequence[int | None], *, match_distances: Sequence[float | None],
                   query_ap: float | None, cell_size: tuple[int, int] = (128, 64)) -> np.ndarray:
    """One row: the query, a wider gap, then the matches in rank order, with their numbers.

    Args:
        query_path: the query image file.
        query_pid: its identity, which decides each match's frame colour.
        match_paths: gallery image files, nearest first; None leaves that cell blank.
        match_pids: their identities.
        match_distances: their distances to the query.
        query_ap: the query's average precision (None: no valid match, shown as n/a).
        cell_size: (height, width) of each picture.

    Returns:
        uint8 picture_shape(len(match_paths), cell_size) on a white background.
    """
    height, width = cell_size
    canvas = np.full(picture_shape(len(match_paths), cell_size), 255, np.uint8)
    stem = os.path.splitext(os.path.basename(query_path))[0]
    ap = "n/a (no match in another camera)" if query_ap is None else f"{100 * query_ap:.1f}%"
    exponent = distance_exponent(match_distances)
    unit = f"  distances in 1e{exponent}" if exponent else ""
    pictures.draw_text(canvas, f"query {stem}  id {query_pid}  AP {ap}{unit}", GAP, GAP)
    below = CELL_TOP + height + 3
    cells = [(query_path, query_pid, None, "query", QUERY_FRAME)]
    for rank, (path, pid, distance) in enumerate(zip(match_paths, match_pids, match_distances)):
        cells.append((path, pid, distance, f"#{rank + 1}", GREEN if pid == query_pid else RED))
    for position, (path, pid, distance, label, colour) in enumerate(cells):
        if path is None:
            continue
        x = cell_left(position, cell_size)
        canvas[CELL_TOP:CELL_TOP + height, x:x + width] = pictures.read_crop(path, cell_size,
                                                                            colour)
        pictures.draw_caption(canvas, label, x, CELL_TOP - LINE + 2, width)
        if distance is not None:
            pictures.draw_caption(canvas, f"{distance / 10.0 ** exponent:.3f}", x, below, width)
        pictures.draw_caption(canvas, str(pid), x, below + (LINE if position else 0), width)
    return canvas


def write_ranklists(out_dir: str, distances: np.ndarray, query_samples: Sequence,
                    gallery_samples: Sequence, *, topk: int = 10,
                    cell_size: tuple[int, int] = (128, 64)) -> list[str]:
    """Writes one PNG per query: the query, its identity and AP, and its top-k gallery matches.

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
    g_pids, g_camids = [g.pid for g in gallery_samples], [g.camid for g in gallery_samples]
    top = evaluation.top_matches(distances, [q.pid for q in query_samples],
                                 [q.camid for q in query_samples], g_pids, g_camids, topk)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for row, (query, indices) in enumerate(zip(query_samples, top)):
        matches = [gallery_samples[g] if g >= 0 else None for g in indices]
        picture = ranklist_image(
            query.path, query.pid, [m.path if m else None for m in matches],
            [m.pid if m else None for m in matches],
            match_distances=[float(distances[row, g]) if g >= 0 else None for g in indices],
            query_ap=average_precision(distances[row], query.pid, query.camid, g_pids, g_camids),
            cell_size=cell_size)
        stem = os.path.splitext(os.path.basename(query.path))[0]
        written.append(pictures.write_png(os.path.join(out_dir, f"{row:03d}_{stem}.png"),
                                          picture))
    return written
