"""Tests for mlc_tf.ranklist: layout, frame colours and files written."""

import collections

import numpy as np
import tensorflow as tf

from mlc_tf import ranklist

Sample = collections.namedtuple("Sample", "path pid camid")


def _write_image(path, value):
    path = str(path)
    tf.io.write_file(path, tf.io.encode_png(np.full((16, 8, 3), value, np.uint8)))
    return path


def test_ranklist_frames_and_size(tmp_path):
    query = _write_image(tmp_path / "q.png", 100)
    matches = [_write_image(tmp_path / f"g{i}.png", 100) for i in range(3)]
    picture = ranklist.ranklist_image(query, 7, matches, [7, 3, 7], cell_size=(32, 16))
    gap = ranklist._GAP
    assert picture.shape == (32 + 2 * gap, gap + 16 + 3 * gap + 3 * 16 + 2 * gap + gap, 3)
    # Top-left pixel of each match frame: green, red, green.
    first_match_x = gap + 16 + 3 * gap
    colours = [tuple(picture[gap, first_match_x + i * (16 + gap)]) for i in range(3)]
    assert colours == [ranklist.GREEN, ranklist.RED, ranklist.GREEN]
    # Inside the frame the picture itself shows.
    assert tuple(picture[gap + 10, first_match_x + 8]) == (100, 100, 100)


def test_write_ranklists_skips_missing_matches(tmp_path):
    queries = [Sample(_write_image(tmp_path / f"q{i}.png", 50), i, 0) for i in range(4)]
    gallery = [Sample(_write_image(tmp_path / f"g{i}.png", 200), i % 2, 1) for i in range(5)]
    topk = np.array([[0, 1, -1], [1, 2, 3], [4, -1, -1], [0, 1, 2]])
    written = ranklist.write_ranklists(str(tmp_path / "out"), topk, queries, gallery,
                                       num_queries=2, cell_size=(32, 16))
    assert [p.rsplit("/", 1)[1] for p in written] == ["query_00000_pid0.png", "query_00003_pid3.png"]
    first = tf.io.decode_png(tf.io.read_file(written[0])).numpy()
    last = tf.io.decode_png(tf.io.read_file(written[1])).numpy()
    assert first.shape[1] < last.shape[1]  # two matches drawn against three
