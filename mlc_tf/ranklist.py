"""Rank-list pictures: each query beside its top gallery matches, framed green (true) or red."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

GREEN = (0, 170, 0)
RED = (220, 0, 0)
QUERY_FRAME = (60, 60, 60)
_FRAME = 3
_GAP = 6


def _cell(path: str, cell_size: tuple[int, int], colour: tuple[int, int, int]) -> np.ndarray:
    """An image resized to cell_size with a coloured frame drawn over its border."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(image, cell_size, antialias=True)
    cell = np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8)
    cell[:_FRAME], cell[-_FRAME:], cell[:, :_FRAME], cell[:, -_FRAME:] = (colour,) * 4
    return cell


def ranklist_image(query_path: str, query_pid: int, match_paths: Sequence[str],
                   match_pids: Sequence[int], cell_size: tuple[int, int] = (128, 64)) -> np.ndarray:
    """One row: the query, a wider gap, then the matches in rank order.

    Args:
        query_path: the query image file.
        query_pid: its identity, to colour the matches.
        match_paths: gallery image files, nearest first.
        match_pids: their identities.
        cell_size: (height, width) of each picture.

    Returns:
        uint8 (H, W, 3) on a white background.
    """
    height, width = cell_size
    cells = [_cell(query_path, cell_size, QUERY_FRAME)]
    cells += [_cell(path, cell_size, GREEN if pid == query_pid else RED)
              for path, pid in zip(match_paths, match_pids)]
    # Margins of one gap, three gaps after the query, one between matches.
    separators = (3 * _GAP + (len(cells) - 2) * _GAP) if len(cells) > 1 else 0
    canvas = np.full((height + 2 * _GAP, len(cells) * width + separators + 2 * _GAP, 3), 255,
                     np.uint8)
    x = _GAP
    for position, cell in enumerate(cells):
        canvas[_GAP:_GAP + height, x:x + width] = cell
        x += width + (3 * _GAP if position == 0 else _GAP)
    return canvas


def write_ranklists(out_dir: str, topk: np.ndarray, query_samples: Sequence,
                    gallery_samples: Sequence, num_queries: int = 20,
                    cell_size: tuple[int, int] = (128, 64)) -> list[str]:
    """Writes PNG rank lists for num_queries queries spread evenly over the query set.

    Args:
        out_dir: folder for the PNGs (created if missing).
        topk: int (Q, k) gallery indices per query, nearest first, -1 for none
            (mlc_tf.evaluation.evaluate_features(..., return_topk=k)).
        query_samples, gallery_samples: objects with .path and .pid (Sample).
        num_queries: how many rank lists to write.
        cell_size: (height, width) of each picture.

    Returns:
        The written file paths.
    """
    os.makedirs(out_dir, exist_ok=True)
    chosen = np.unique(np.linspace(0, len(query_samples) - 1, min(num_queries, len(query_samples)))
                       .round().astype(int))
    written = []
    for q in chosen:
        query = query_samples[q]
        matches = [gallery_samples[g] for g in topk[q] if g >= 0]
        picture = ranklist_image(query.path, query.pid, [m.path for m in matches],
                                 [m.pid for m in matches], cell_size)
        path = os.path.join(out_dir, f"query_{q:05d}_pid{query.pid}.png")
        tf.io.write_file(path, tf.io.encode_png(picture))
        written.append(path)
    return written
