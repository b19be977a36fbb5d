"""Pictures of what was learnt: sampled clusters (paper Fig. 6) and training curves, as PNGs.

Drawn with NumPy (a 5x7 bitmap font for text) and written with tf.io.encode_png, so no plotting
package is needed. Pictures are uint8 (H, W, 3) arrays on a white background.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

PICTURES_DIR = "pictures"
HISTORY_FILE = "history.jsonl"
CURVES_FILE = "curves.png"

TEXT = (20, 20, 20)
GREEN = (0, 170, 0)
RED = (220, 0, 0)
GREY = (150, 150, 150)
CURVE = (31, 100, 200)
GRID = (225, 225, 225)
FRAME = 3  # frame width in pixels, drawn over a crop's border
GAP = 6  # white space around and between crops
TEXT_SCALE = 2  # font pixels per glyph pixel
LINE_HEIGHT = 7 * TEXT_SCALE + 4

# 5x7 glyphs, 13 to a block: the characters, then their 7 rows ('#' = ink), 6 columns apart.
_GLYPH_BLOCKS = """
0     1     2     3     4     5     6     7     8     9     .     ,     :
.###. ..#.. .###. ##### ...#. ##### ..##. ##### .###. .###. ..... ..... .....
#...# .##.. #...# ...#. ..##. #.... .#... ....# #...# #...# ..... ..... .##..
#..## ..#.. ....# ..#.. .#.#. ####. #.... ...#. #...# #...# ..... ..... .##..
#.#.# ..#.. ...#. ...#. #..#. ....# ####. ..#.. .###. .#### ..... ..... .....
##..# ..#.. ..#.. ....# ##### ....# #...# .#... #...# ....# ..... .##.. .##..
#...# ..#.. .#... #...# ...#. #...# #...# .#... #...# ...#. .##.. ..#.. .##..
.###. .###. ##### .###. ...#. .###. .###. .#... .###. .##.. .##.. .#... .....

A     B     C     D     E     F     G     H     I     J     K     L     M
.###. ####. .###. ###.. ##### ##### .###. #...# .###. ..### #...# #.... #...#
#...# #...# #...# #..#. #.... #.... #...# #...# ..#.. ...#. #..#. #.... ##.##
#...# #...# #.... #...# #.... #.... #.... #...# ..#.. ...#. #.#.. #.... #.#.#
#...# ####. #.... #...# ####. ####. #.### ##### ..#.. ...#. ##... #.... #.#.#
##### #...# #.... #...# #.... #.... #...# #...# ..#.. ...#. #.#.. #.... #...#
#...# #...# #...# #..#. #.... #.... #...# #...# ..#.. #..#. #..#. #.... #...#
#...# ####. .###. ###.. ##### #.... .#### #...# .###. .##.. #...# ##### #...#

N     O     P     Q     R     S     T     U     V     W     X     Y     Z
#...# .###. ####. .###. ####. .#### ##### #...# #...# #...# #...# #...# #####
#...# #...# #...# #...# #...# #.... ..#.. #...# #...# #...# #...# #...# ....#
##..# #...# #...# #...# #...# #.... ..#.. #...# #...# #...# .#.#. #...# ...#.
#.#.# #...# ####. #...# ####. .###. ..#.. #...# #...# #.#.# ..#.. .#.#. ..#..
#..## #...# #.... #.#.# #.#.. ....# ..#.. #...# #...# #.#.# .#.#. ..#.. .#...
#...# #...# #.... #..#. #..#. ....# ..#.. #...# .#.#. #.#.# #...# ..#.. #....
#...# .###. #.... .##.# #...# ####. ..#.. .###. ..#.. .#.#. #...# ..#.. #####

a     b     c     d     e     f     g     h     i     j     k     l     m
..... #.... ..... ....# ..... ..##. ..... #.... ..#.. ...#. #.... .##.. .....
..... #.... ..... ....# ..... .#..# .#### #.... ..... ..... #.... ..#.. .....
.###. #.##. .###. .##.# .###. .#... #...# #.##. .##.. ..##. #..#. ..#.. ##.#.
....# ##..# #.... #..## #...# ###.. #...# ##..# ..#.. ...#. #.#.. ..#.. #.#.#
.#### #...# #.... #...# ##### .#... .#### #...# ..#.. ...#. ##... ..#.. #.#.#
#...# #...# #...# #...# #.... .#... ....# #...# ..#.. #..#. #.#.. ..#.. #...#
.#### ####. .###. .#### .###. .#... .###. #...# .###. .##.. #..#. .###. #...#

n     o     p     q     r     s     t     u     v     w     x     y     z
..... ..... ..... ..... ..... ..... .#... ..... ..... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... .#... ..... ..... ..... ..... ..... .....
#.##. .###. ####. .##.# #.##. .###. ###.. #...# #...# #...# #...# #...# #####
##..# #...# #...# #..## ##..# #.... .#... #...# #...# #...# .#.#. #...# ...#.
#...# #...# ####. .#### #.... .###. .#... #...# #...# #.#.# ..#.. .#### ..#..
#...# #...# #.... ....# #.... ....# .#..# #..## .#.#. #.#.# .#.#. ....# .#...
#...# .###. #.... ....# #.... ####. ..##. .##.# ..#.. .#.#. #...# .###. #####

%     -     +     /     (     )     =     #     _     ?     !     ;     *
##... ..... ..... ..... ...#. .#... ..... .#.#. ..... .###. ..#.. ..... .....
##..# ..... ..#.. ....# ..#.. ..#.. ..... .#.#. ..... #...# ..#.. .##.. ..#..
...#. ..... ..#.. ...#. .#... ...#. ##### ##### ..... ....# ..#.. .##.. #.#.#
..#.. ##### ##### ..#.. .#... ...#. ..... .#.#. ..... ...#. ..#.. ..... .###.
.#... ..... ..#.. .#... .#... ...#. ##### ##### ..... ..#.. ..#.. .##.. #.#.#
#..## ..... ..#.. #.... ..#.. ..#.. ..... .#.#. ..... ..... ..... ..#.. ..#..
...## ..... ..... ..... ...#. .#... ..... .#.#. ##### ..#.. ..#.. .#... .....
"""


def _parse_glyphs(blocks: str) -> dict[str, np.ndarray]:
    glyphs = {" ": np.zeros((7, 5), bool)}
    lines = [line for line in blocks.splitlines() if line.strip()]
    for start in range(0, len(lines), 8):
        header, rows = lines[start], lines[start + 1:start + 8]
        for column in range(0, len(header), 6):
            glyphs[header[column]] = np.array(
                [[pixel == "#" for pixel in row[column:column + 5]] for row in rows])
    return glyphs


GLYPHS = _parse_glyphs(_GLYPH_BLOCKS)


def text_width(text: str, scale: int = TEXT_SCALE) -> int:
    """Pixels `text` spans: 6 glyph columns a character, less the last one's spacing."""
    return max(6 * len(text) - 1, 0) * scale


def draw_text(canvas: np.ndarray, text: str, x: int, y: int, colour=TEXT,
              scale: int = TEXT_SCALE) -> None:
    """Draws `text` into canvas in place, its top-left corner at (x, y), clipped at the edges.

    Characters without a glyph are drawn as '?'.

    Args:
        canvas: uint8 (H, W, 3) picture.
        text: one line.
        x, y: column and row of the top-left corner.
        colour: RGB of the ink.
        scale: canvas pixels per glyph pixel.
    """
    for position, char in enumerate(text):
        glyph = np.kron(GLYPHS.get(char, GLYPHS["?"]), np.ones((scale, scale), bool))
        left = x + 6 * scale * position
        top_clip, left_clip = max(0, -y), max(0, -left)
        window = canvas[y + top_clip:y + glyph.shape[0], left + left_clip:left + glyph.shape[1]]
        ink = glyph[top_clip:top_clip + window.shape[0], left_clip:left_clip + window.shape[1]]
        window[ink] = colour


def draw_caption(canvas: np.ndarray, text: str, x: int, y: int, width: int) -> None:
    """Draws `text` at TEXT_SCALE, or at scale 1 when it would not fit in `width` pixels."""
    draw_text(canvas, text, x, y, scale=TEXT_SCALE if text_width(text) <= width else 1)


def read_crop(path: str, cell_size: tuple[int, int], frame_colour=None) -> np.ndarray:
    """An image file resized to cell_size (height, width), optionally framed; uint8 (h, w, 3)."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(image, cell_size, antialias=True)
    cell = np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8)
    if frame_colour is not None:
        cell[:FRAME], cell[-FRAME:], cell[:, :FRAME], cell[:, -FRAME:] = (frame_colour,) * 4
    return cell


def write_png(path: str, picture: np.ndarray) -> str:
    """Writes a uint8 (H, W, 3) picture as a PNG (creating its folder); returns the path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(picture))
    return path


def write_image_summary(writer: tf.summary.SummaryWriter, name: str, picture: np.ndarray,
                        step: int) -> None:
    """Writes a picture as a TensorBoard image summary at `step`, then flushes.

    The images plugin reads a string tensor [width, height, PNG]; it is written with core TF
    (as summaries.write_scalars does) so that the tensorboard package is needed only to view it.
    """
    metadata = tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="images"))
    height, width = picture.shape[:2]
    tensor = tf.stack([tf.as_string(width), tf.as_string(height), tf.io.encode_png(picture)])
    with writer.as_default(step=step):
        tf.summary.write(name, tensor, metadata=metadata)
    writer.flush()


# ----------------------------------------------------------------------------- clusters

def sample_clusters(labels: np.ndarray, *, num_clusters: int = 8, members_per_cluster: int = 10,
                    seed: int = 0) -> list[tuple[int, np.ndarray]]:
    """Draws clusters and members of each to show, the same for the same seed.

    Args:
        labels: (N,) int cluster of each sample, -1 for outliers.
        num_clusters: clusters drawn (all when fewer), without replacement.
        members_per_cluster: members drawn from each cluster (all when fewer).
        seed: seed of the draws.

    Returns:
        [(cluster, member indices sorted ascending)], by ascending cluster.

    Raises:
        ValueError: labels is not a vector, or a count is below 1.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a vector, got shape {labels.shape}")
    if num_clusters < 1 or members_per_cluster < 1:
        raise ValueError(f"num_clusters ({num_clusters}) and members_per_cluster "
                         f"({members_per_cluster}) must be >= 1")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[labels >= 0])
    chosen = np.sort(rng.choice(classes, size=min(num_clusters, classes.size), replace=False))
    sampled = []
    for cluster in chosen.tolist():
        members = np.flatnonzero(labels == cluster)
        picked = rng.choice(members, size=min(members_per_cluster, members.size), replace=False)
        sampled.append((cluster, np.sort(picked)))
    return sampled


def majority_identity(true_ids: np.ndarray) -> tuple[int, int]:
    """(the most frequent identity, its count); ties go to the smallest identity."""
    identities, counts = np.unique(np.asarray(true_ids), return_counts=True)
    best = int(np.argmax(counts))
    return int(identities[best]), int(counts[best])


def cluster_cell_origin(row: int, column: int, cell_size: tuple[int, int],
                        captions: bool) -> tuple[int, int]:
    """(top, left) pixel of a member's crop in cluster_picture's grid.

    Below a title line, each row is a text line, the crops, then (with captions) a line of
    true identities.
    """
    height, width = cell_size
    pitch = LINE_HEIGHT + height + (LINE_HEIGHT if captions else 0) + 2 * GAP
    return (2 * GAP + LINE_HEIGHT + row * pitch + LINE_HEIGHT,
            GAP + column * (width + GAP))


def cluster_picture(paths: Sequence[str], labels: np.ndarray,
                    true_ids: np.ndarray | None = None, *, title: str, seed: int = 0,
                    num_clusters: int = 8, members_per_cluster: int = 10,
                    cell_size: tuple[int, int] = (128, 64)) -> np.ndarray:
    """A row of sampled members for each of some sampled clusters (paper Fig. 6).

    With true identities, each member is framed GREEN when its identity is its cluster's
    majority identity (over the whole cluster) and RED otherwise, and its identity is written
    below it; without them every frame is GREY.

    Args:
        paths: (N,) image file of each sample.
        labels: (N,) cluster of each sample, -1 for outliers.
        true_ids: (N,) true identities, or None when unknown.
        title: the top line.
        seed, num_clusters, members_per_cluster: as sample_clusters.
        cell_size: (height, width) each crop is drawn at.

    Returns:
        uint8 (H, W, 3); W fits members_per_cluster crops (or the title).

    Raises:
        ValueError: paths, labels and true_ids differ in length, or no sample is clustered.
    """
    labels = np.asarray(labels)
    if len(paths) != len(labels) or (true_ids is not None and len(true_ids) != len(labels)):
        raise ValueError(f"{len(paths)} paths, {len(labels)} labels and "
                         f"{'no' if true_ids is None else len(true_ids)} true ids must agree")
    sampled = sample_clusters(labels, num_clusters=num_clusters,
                              members_per_cluster=members_per_cluster, seed=seed)
    if not sampled:
        raise ValueError("no clustered sample to draw: every label is -1")
    captions = true_ids is not None
    height, width = cell_size
    bottom, _ = cluster_cell_origin(len(sampled), 0, cell_size, captions)
    canvas_width = max(GAP + members_per_cluster * (width + GAP), text_width(title) + 2 * GAP)
    canvas = np.full((bottom - LINE_HEIGHT, canvas_width, 3), 255, np.uint8)
    draw_text(canvas, title, GAP, GAP)
    for row, (cluster, members) in enumerate(sampled):
        size = int(np.sum(labels == cluster))
        line = f"cluster {cluster}: {size} images"
        if captions:
            majority, count = majority_identity(np.asarray(true_ids)[labels == cluster])
            line += f", majority id {majority} ({count} of {size})"
        top, _ = cluster_cell_origin(row, 0, cell_size, captions)
        draw_text(canvas, line, GAP, top - LINE_HEIGHT + 2)
        for column, member in enumerate(members.tolist()):
            top, left = cluster_cell_origin(row, column, cell_size, captions)
            colour = GREY
            if captions:
                colour = GREEN if int(true_ids[member]) == majority else RED
                draw_caption(canvas, str(int(true_ids[member])), left, top + height + 3, width)
            canvas[top:top + height, left:left + width] = read_crop(paths[member], cell_size,
                                                                    colour)
    return canvas


def write_clusters(workdir: str, epoch: int, paths: Sequence[str], labels: np.ndarray,
                   true_ids: np.ndarray | None = None, *, seed: int,
                   writer: tf.summary.SummaryWriter | None = None) -> str | None:
    """Writes the cluster_picture of an SC round to <workdir>/pictures/clusters_epochNNN.png.

    Args:
        workdir: the run's folder.
        epoch: 1-based epoch the labels train (the PNG's name and the summary's step).
        paths, labels, true_ids, seed: as cluster_picture.
        writer: also write it as the TensorBoard image 'clusters'.

    Returns:
        the PNG's path, or None when no sample is clustered (nothing is written).
    """
    labels = np.asarray(labels)
    if not (labels >= 0).any():
        return None
    title = (f"epoch {epoch}: {len(np.unique(labels[labels >= 0]))} clusters, "
             f"{100 * np.mean(labels < 0):.1f}% outliers")
    picture = cluster_picture(paths, labels, true_ids, title=title, seed=seed)
    if writer is not None:
        write_image_summary(writer, "clusters", picture, epoch)
    return write_png(os.path.join(workdir, PICTURES_DIR, f"clusters_epoch{epoch:03d}.png"),
                     picture)


# ----------------------------------------------------------------------------- curves

# (scalar name, panel title, factor applied to the values), in drawing order.
PANELS = (("train/loss", "loss", 1.0), ("train/mmcl", "MMCL loss", 1.0),
          ("train/ce", "CE loss", 1.0), ("train/triplet", "triplet loss", 1.0),
          ("eval/mAP", "mAP %", 100.0), ("eval/rank1", "rank-1 %", 100.0),
          ("cluster/num_clusters", "clusters", 1.0),
          ("cluster/outlier_fraction", "outliers %", 100.0))
PANEL_SIZE = (240, 340)  # (height, width) of one panel
PANELS_PER_ROW = 4


def append_history(workdir: str, epoch: int, scalars: Mapping[str, float]) -> None:
    """Appends one epoch's scalars to <workdir>/history.jsonl as {'epoch': epoch, name: value}."""
    record = {"epoch": int(epoch), **{name: float(value) for name, value in scalars.items()}}
    with open(os.path.join(workdir, HISTORY_FILE), "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_history(workdir: str) -> list[dict]:
    """The per-epoch records of append_history, by ascending epoch ([] without a file).

    A record replaces the records written before it for its epoch and later ones: a run that
    resumed from an earlier checkpoint retrained those epochs. Lines that are not a record (a
    line cut short when a run was killed) are skipped.
    """
    path = os.path.join(workdir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    by_epoch: dict[int, dict] = {}
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
                epoch = int(record["epoch"])
            except (ValueError, TypeError, KeyError):
                continue
            by_epoch = {e: r for e, r in by_epoch.items() if e < epoch}
            by_epoch[epoch] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def nice_ticks(low: float, high: float, max_ticks: int = 5, min_step: float = 0.0) -> np.ndarray:
    """Ticks at a multiple of 1, 2 or 5 x 10^k, from at or below low to at or above high.

    Args:
        low, high: the range to cover (low < high).
        max_ticks: at most about this many intervals.
        min_step: the smallest step allowed (1 for whole numbers).

    Returns:
        float64 (T,) ascending ticks, T >= 2.
    """
    raw = max((high - low) / max_ticks, min_step, 1e-12)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return np.arange(first, max(last, first + 1) + 1) * step


def _tick_label(value: float, ticks: np.ndarray) -> str:
    decimals = max(0, -math.floor(math.log10(ticks[1] - ticks[0]) + 1e-9))
    return f"{value:.{decimals}f}"


def draw_line(canvas: np.ndarray, start: tuple[float, float], end: tuple[float, float],
              colour, thickness: int = 2) -> None:
    """Draws a segment from (row, column) start to end in place, thickness pixels wide."""
    steps = int(max(abs(end[0] - start[0]), abs(end[1] - start[1]))) + 1
    rows = np.round(np.linspace(start[0], end[0], steps + 1)).astype(int)
    columns = np.round(np.linspace(start[1], end[1], steps + 1)).astype(int)
    for offset in range(thickness):
        inside = ((rows + offset >= 0) & (rows + offset < canvas.shape[0])
                  & (columns >= 0) & (columns < canvas.shape[1]))
        canvas[rows[inside] + offset, columns[inside]] = colour
        inside = ((rows >= 0) & (rows < canvas.shape[0])
                  & (columns + offset >= 0) & (columns + offset < canvas.shape[1]))
        canvas[rows[inside], columns[inside] + offset] = colour


def panel_picture(title: str, epochs: Sequence[int], values: Sequence[float],
                  size: tuple[int, int] = PANEL_SIZE) -> np.ndarray:
    """One curve: title, axes with tick numbers, grid, and the points joined in epoch order.

    Args:
        title: the panel's title.
        epochs: (T,) x values, ascending.
        values: (T,) y values; non-finite ones are left out.
        size: (height, width).

    Returns:
        uint8 (height, width, 3).
    """
    height, width = size
    canvas = np.full((height, width, 3), 255, np.uint8)
    draw_text(canvas, title, GAP + 70, GAP)
    epochs, values = np.asarray(epochs, float), np.asarray(values, float)
    keep = np.isfinite(values)
    epochs, values = epochs[keep], values[keep]
    top, bottom, left, right = GAP + LINE_HEIGHT + 8, height - LINE_HEIGHT - 8, GAP + 70, width - 16
    if not epochs.size:
        draw_text(canvas, "no values", left + 10, (top + bottom) // 2, GREY)
        return canvas
    # The x axis spans the epochs exactly; the y axis runs from tick to tick.
    first, last = epochs.min() - (epochs.min() == epochs.max()), epochs.max()
    x_ticks = nice_ticks(first, last, max_ticks=5, min_step=1.0)
    x_ticks = x_ticks[(x_ticks >= first) & (x_ticks <= last)]
    low, high = values.min(), values.max()
    # A little room, so that no point lies on the x axis or the top edge (but no negative
    # ticks under a series that never is).
    pad = 0.05 * (high - low) if high > low else (abs(low) * 0.1 or 1.0)
    y_ticks = nice_ticks(low - pad if low - pad >= 0 or low < 0 else 0.0, high + pad,
                         max_ticks=4)

    def to_pixel(epoch: float, value: float) -> tuple[float, float]:
        return (bottom - (value - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * (bottom - top),
                left + (epoch - first) / (last - first) * (right - left))

    for tick in y_ticks:
        row = int(round(to_pixel(first, tick)[0]))
        canvas[row, left:right + 1] = GRID
        label = _tick_label(tick, y_ticks)
        scale = TEXT_SCALE if text_width(label) <= left - GAP - 6 else 1
        draw_text(canvas, label, left - 6 - text_width(label, scale), row - 7 * scale // 2,
                  scale=scale)
    for tick in x_ticks:
        column = int(round(to_pixel(tick, y_ticks[0])[1]))
        canvas[top:bottom + 1, column] = GRID
        label = f"{tick:.0f}"
        draw_text(canvas, label, column - text_width(label) // 2, bottom + 6)
    canvas[top:bottom + 1, left] = TEXT
    canvas[bottom, left:right + 1] = TEXT
    points = [to_pixel(epoch, value) for epoch, value in zip(epochs, values)]
    for start, end in zip(points, points[1:]):
        draw_line(canvas, start, end, CURVE)
    for row, column in points:
        row, column = int(round(row)), int(round(column))
        canvas[max(row - 2, 0):row + 3, max(column - 2, 0):column + 3] = CURVE
    return canvas


def curves_picture(history: Sequence[Mapping[str, float]],
                   panels: Sequence[tuple[str, str, float]] = PANELS) -> np.ndarray | None:
    """The panels whose scalar appears in the history, PANELS_PER_ROW to a row.

    Args:
        history: per-epoch records with 'epoch' and scalar names (read_history).
        panels: (scalar name, title, factor) of each panel.

    Returns:
        uint8 (H, W, 3), or None when no panel's scalar appears.
    """
    drawn = []
    for name, title, factor in panels:
        rows = [record for record in history if name in record]
        if rows:
            drawn.append(panel_picture(title, [r["epoch"] for r in rows],
                                       [factor * r[name] for r in rows]))
    if not drawn:
        return None
    columns = min(len(drawn), PANELS_PER_ROW)
    height, width = PANEL_SIZE
    canvas = np.full((math.ceil(len(drawn) / columns) * height, columns * width, 3), 255,
                     np.uint8)
    for position, panel in enumerate(drawn):
        row, column = divmod(position, columns)
        canvas[row * height:(row + 1) * height, column * width:(column + 1) * width] = panel
    return canvas


def write_curves(workdir: str) -> str | None:
    """Draws <workdir>/history.jsonl into <workdir>/pictures/curves.png; returns its path.

    Returns:
        the PNG's path, or None when the history holds none of the PANELS' scalars.
    """
    picture = curves_picture(read_history(workdir))
    if picture is None:
        return None
    return write_png(os.path.join(workdir, PICTURES_DIR, CURVES_FILE), picture)
