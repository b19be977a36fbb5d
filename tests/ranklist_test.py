"""Tests for mlc_tf.ranklist: layout, frame colours, text, AP, removed items, files written."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import pictures, ranklist

Sample = collections.namedtuple("Sample", "path pid camid")
CELL = (32, 16)
GAP = ranklist.GAP


def _write_image(path, value):
    path = str(path)
    tf.io.write_file(path, tf.io.encode_png(np.full((20, 10, 3), value, np.uint8)))
    return path


def _cell_x(position):
    """Left edge of the picture at `position` (0 = query, 1 = best match)."""
    return GAP if position == 0 else GAP + CELL[1] + 3 * GAP + (position - 1) * (CELL[1] + GAP)


TOP = ranklist.CELL_TOP


def test_ranklist_image_layout_and_frames(tmp_path):
    query = _write_image(tmp_path / "q.png", 100)
    matches = [_write_image(tmp_path / f"g{i}.png", 100) for i in range(3)]
    picture = ranklist.ranklist_image(query, 7, matches + [None], [7, 3, 7, None],
                                      match_distances=[0.1, 0.2, 0.3, None], query_ap=0.5,
                                      cell_size=CELL)
    assert picture.dtype == np.uint8
    assert picture.shape == ranklist.picture_shape(4, CELL) == (
        TOP + CELL[0] + 2 * ranklist.LINE + GAP, 5 * CELL[1] + 8 * GAP, 3)
    assert [ranklist.cell_left(i, CELL) for i in range(5)] == [_cell_x(i) for i in range(5)]
    assert tuple(picture[TOP, _cell_x(0)]) == ranklist.QUERY_FRAME
    assert [tuple(picture[TOP, _cell_x(i)]) for i in (1, 2, 3)] == [
        ranklist.GREEN, ranklist.RED, ranklist.GREEN]
    # Frames run round the whole border; inside them the picture shows.
    x = _cell_x(2)
    assert tuple(picture[TOP + CELL[0] - 1, x + CELL[1] - 1]) == ranklist.RED
    assert tuple(picture[TOP + CELL[0] // 2, x + CELL[1] // 2]) == (100, 100, 100)
    # Beside the pictures, gaps and the blank fourth cell stay white.
    band = picture[TOP:TOP + CELL[0]]
    assert (band[:, _cell_x(1) - 3 * GAP:_cell_x(1)] == 255).all()
    assert (band[:, _cell_x(4):] == 255).all()


def _text_band(text, shape, x, y):
    """What pictures.draw_text draws for `text` at (x, y) on a white canvas of `shape`."""
    canvas = np.full(shape, 255, np.uint8)
    pictures.draw_text(canvas, text, x, y)
    return canvas


def test_write_ranklists_writes_identity_ap_rank_and_distance(tmp_path):
    wide = (64, 64)  # wide enough for the captions at TEXT_SCALE
    queries = [Sample(_write_image(tmp_path / "q1.png", 50), 1, 0),
               Sample(_write_image(tmp_path / "q2.png", 50), 2, 0),
               Sample(_write_image(tmp_path / "q3.png", 50), 3, 0)]
    gallery = [Sample(_write_image(tmp_path / "g0.png", 10), 2, 1),
               Sample(_write_image(tmp_path / "g1.png", 20), 1, 1)]
    # Each of queries 1 and 2 has its true match second (AP 1/2); query 3 has none.
    distances = np.array([[0.1, 0.3], [0.4, 0.2], [0.2, 0.4]])
    written = ranklist.write_ranklists(str(tmp_path / "out"), distances, queries, gallery,
                                       cell_size=wide)
    first, second, third = (tf.io.decode_png(tf.io.read_file(p)).numpy() for p in written)
    header = slice(GAP, GAP + ranklist.LINE)
    for picture, text in ((first, "query q1  id 1  AP 50.0%"),
                          (second, "query q2  id 2  AP 50.0%"),
                          (third, "query q3  id 3  AP n/a (no match in another camera)")):
        np.testing.assert_array_equal(picture[header],
                                      _text_band(text, picture.shape, GAP, GAP)[header])
    above = slice(TOP - ranklist.LINE, TOP)
    below = slice(TOP + wide[0], TOP + wide[0] + ranklist.LINE)
    under = slice(TOP + wide[0] + ranklist.LINE, TOP + wide[0] + 2 * ranklist.LINE)
    for position, rank, distance, pid in ((1, "#1", "0.100", 2), (2, "#2", "0.300", 1)):
        x = ranklist.cell_left(position, wide)
        columns = slice(x, x + wide[1])
        for rows, text, y in ((above, rank, TOP - ranklist.LINE + 2),
                              (below, distance, TOP + wide[0] + 3),
                              (under, str(pid), TOP + wide[0] + ranklist.LINE + 3)):
            np.testing.assert_array_equal(first[rows, columns],
                                          _text_band(text, first.shape, x, y)[rows, columns])


def test_tiny_distances_are_written_in_a_power_of_ten(tmp_path):
    assert ranklist.distance_exponent([0.5, None, 0.001]) == 0
    assert ranklist.distance_exponent([2e-6, 3.5e-5, None]) == -5
    assert ranklist.distance_exponent([0.0, None]) == 0
    wide = (64, 64)
    query = _write_image(tmp_path / "q.png", 50)
    match = _write_image(tmp_path / "g.png", 10)
    picture = ranklist.ranklist_image(query, 1, [match] * 2 + [None] * 8, [1, 2] + [None] * 8,
                                      match_distances=[2e-6, 3.5e-5] + [None] * 8, query_ap=1.0,
                                      cell_size=wide)
    header = slice(GAP, GAP + ranklist.LINE)
    np.testing.assert_array_equal(picture[header], _text_band(
        "query q  id 1  AP 100.0%  distances in 1e-5", picture.shape, GAP, GAP)[header])
    below = slice(TOP + wide[0], TOP + wide[0] + ranklist.LINE)
    for position, text in ((1, "0.200"), (2, "3.500")):
        x = ranklist.cell_left(position, wide)
        np.testing.assert_array_equal(
            picture[below, x:x + wide[1]],
            _text_band(text, picture.shape, x, TOP + wide[0] + 3)[below, x:x + wide[1]])


def test_average_precision_by_hand():
    # Query pid 1, camera 0: gallery items 2 and 4 (pid 1, camera 0) are removed; of the kept
    # items 1 (0.1), 3 (0.2) and 0 (0.3) the true match comes third: AP = 1/3.
    g_pids, g_camids = [1, 2, 1, 3, 1], [1, 1, 0, 1, 0]
    distances = np.array([0.3, 0.1, 0.0, 0.2, 0.05])
    assert ranklist.average_precision(distances, 1, 0, g_pids, g_camids) == pytest.approx(1 / 3)
    # True matches at positions 1 and 4: (1/1 + 2/4) / 2.
    assert ranklist.average_precision(np.array([0.1, 0.2, 0.4, 0.3]), 1, 0, [1, 2, 1, 3],
                                      [1, 1, 2, 1]) == pytest.approx(0.75)
    assert ranklist.average_precision(np.array([0.1, 0.2]), 1, 0, [1, 2], [0, 1]) is None


def test_write_ranklists_ranks_and_removes_same_camera_matches(tmp_path):
    queries = [Sample(_write_image(tmp_path / "q0.jpg.png", 50), 1, 0),
               Sample(_write_image(tmp_path / "q1.png", 60), 2, 0)]
    values = [10, 20, 30, 40, 200]
    pids_cams = [(1, 0), (2, 1), (1, 1), (3, 2), (2, 0)]
    gallery = [Sample(_write_image(tmp_path / f"g{i}.png", v), pid, cam)
               for i, (v, (pid, cam)) in enumerate(zip(values, pids_cams))]
    distances = np.array([[0.1, 0.2, 0.3, 0.4, 0.5],
                          [0.5, 0.4, 0.3, 0.2, 0.1]])
    written = ranklist.write_ranklists(str(tmp_path / "out"), distances, queries, gallery, topk=4,
                                       cell_size=CELL)
    assert [p.rsplit("/", 1)[1] for p in written] == ["000_q0.jpg.png", "001_q1.png"]
    first = tf.io.decode_png(tf.io.read_file(written[0])).numpy()
    second = tf.io.decode_png(tf.io.read_file(written[1])).numpy()
    assert first.shape == second.shape == ranklist.picture_shape(4, CELL)
    middle = TOP + CELL[0] // 2

    def shown(picture):
        return [(int(picture[middle, _cell_x(i) + CELL[1] // 2, 0]),
                 tuple(picture[TOP, _cell_x(i)])) for i in (1, 2, 3, 4)]

    # Query 0 (pid 1, cam 0): g0 (pid 1, cam 0) is removed -> g1 red, g2 green, g3 red, g4 red.
    assert shown(first) == [(20, ranklist.RED), (30, ranklist.GREEN), (40, ranklist.RED),
                            (200, ranklist.RED)]
    # Query 1 (pid 2, cam 0): g4 (pid 2, cam 0) is removed -> g3, g2, g1 (pid 2: green), g0.
    assert shown(second) == [(40, ranklist.RED), (30, ranklist.RED), (20, ranklist.GREEN),
                             (10, ranklist.RED)]


def test_write_ranklists_rejects_mismatched_rows(tmp_path):
    query = Sample(_write_image(tmp_path / "q.png", 0), 1, 0)
    with pytest.raises(ValueError, match="one row per query"):
        ranklist.write_ranklists(str(tmp_path), np.zeros((2, 1)), [query], [query])


def test_choose_queries():
    np.testing.assert_array_equal(ranklist.choose_queries(10, 3), [0, 4, 9])
    np.testing.assert_array_equal(ranklist.choose_queries(2, 5), [0, 1])
