"""Tests for mlc_tf.pictures: text, cluster sampling and frames, curves, history, PNG/summary."""

import glob
import json

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import pictures

CELL = (32, 16)


def _write_image(path, value):
    path = str(path)
    tf.io.write_file(path, tf.io.encode_png(np.full((20, 10, 3), value, np.uint8)))
    return path


def _ink(canvas):
    return (canvas != 255).any(axis=-1)


def test_draw_text_draws_known_glyphs():
    canvas = np.full((12, 20, 3), 255, np.uint8)
    pictures.draw_text(canvas, "L7", 2, 3, colour=(0, 0, 0), scale=1)
    letter_l = np.zeros((7, 5), bool)
    letter_l[:, 0] = letter_l[-1, :] = True
    seven = np.zeros((7, 5), bool)
    seven[0, :] = True
    seven[[1, 2, 3, 4, 5, 6], [4, 3, 2, 1, 1, 1]] = True
    expected = np.zeros((12, 20), bool)
    expected[3:10, 2:7] = letter_l
    expected[3:10, 8:13] = seven
    np.testing.assert_array_equal(_ink(canvas), expected)
    assert tuple(canvas[3, 2]) == (0, 0, 0)
    # Scale 2 doubles every glyph pixel; text_width counts the spacing between characters.
    big = np.full((14, 10, 3), 255, np.uint8)
    pictures.draw_text(big, "L", 0, 0, scale=2)
    np.testing.assert_array_equal(_ink(big), np.kron(letter_l, np.ones((2, 2), bool)))
    assert pictures.text_width("L7", 1) == 11 and pictures.text_width("L7", 2) == 22


def test_draw_text_clips_and_marks_unknown_characters():
    canvas = np.full((7, 5, 3), 255, np.uint8)
    pictures.draw_text(canvas, "\u00e9", 0, 0, scale=1)
    np.testing.assert_array_equal(_ink(canvas), pictures.GLYPHS["?"])
    clipped = np.full((4, 8, 3), 255, np.uint8)
    pictures.draw_text(clipped, "L", -1, -3, scale=1)  # only the foot of the L shows
    assert _ink(clipped)[3].tolist() == [True] * 4 + [False] * 4 and not _ink(clipped)[:3].any()


def test_sample_clusters_is_seeded_and_draws_members_of_each_cluster():
    sizes = [3, 12, 5, 20, 2, 11, 7, 15, 9, 4, 30, 6]
    labels = np.concatenate([np.full(size, cluster) for cluster, size in enumerate(sizes)]
                            + [np.full(10, -1)])
    labels = np.random.default_rng(0).permutation(labels)
    sampled = pictures.sample_clusters(labels, seed=3)
    clusters = [cluster for cluster, _ in sampled]
    assert len(clusters) == 8 and clusters == sorted(set(clusters)) and -1 not in clusters
    for cluster, members in sampled:
        assert (labels[members] == cluster).all()
        assert len(members) == min(10, sizes[cluster]) == len(set(members.tolist()))
        assert members.tolist() == sorted(members.tolist())
    again = pictures.sample_clusters(labels, seed=3)
    assert [(c, m.tolist()) for c, m in again] == [(c, m.tolist()) for c, m in sampled]
    other = pictures.sample_clusters(labels, seed=4)
    assert [(c, m.tolist()) for c, m in other] != [(c, m.tolist()) for c, m in sampled]
    # Fewer clusters than asked for: all of them.
    assert [c for c, _ in pictures.sample_clusters(np.array([1, 1, -1, 0]), seed=0)] == [0, 1]
    with pytest.raises(ValueError, match="vector"):
        pictures.sample_clusters(np.zeros((2, 2)))


def test_majority_identity_breaks_ties_by_smallest_identity():
    assert pictures.majority_identity(np.array([4, 9, 9, 4, 2])) == (4, 2)
    assert pictures.majority_identity(np.array([7, 7, 3])) == (7, 2)


def test_cluster_picture_frames_disagreeing_members_red(tmp_path):
    values = [10, 40, 70, 100, 130, 160]
    paths = [_write_image(tmp_path / f"{i}.png", v) for i, v in enumerate(values)]
    labels = np.array([1, 1, 1, 0, 0, -1])
    true_ids = np.array([5, 5, 7, 9, 9, 5])
    picture = pictures.cluster_picture(paths, labels, true_ids, title="t", cell_size=CELL)

    def cell(row, column, captions=True):
        top, left = pictures.cluster_cell_origin(row, column, CELL, captions)
        return top, left

    # Row 0 is cluster 0 (samples 3, 4), row 1 cluster 1 (samples 0, 1, 2; majority id 5).
    expected = {(0, 0): (100, pictures.GREEN), (0, 1): (130, pictures.GREEN),
                (1, 0): (10, pictures.GREEN), (1, 1): (40, pictures.GREEN),
                (1, 2): (70, pictures.RED)}
    for (row, column), (value, colour) in expected.items():
        top, left = cell(row, column)
        assert tuple(picture[top, left]) == colour, (row, column)
        assert tuple(picture[top + CELL[0] - 1, left + CELL[1] - 1]) == colour
        assert tuple(picture[top + CELL[0] // 2, left + CELL[1] // 2]) == (value,) * 3
    top, left = cell(0, 2)  # cluster 0 has two members: the third cell stays white
    assert (picture[top:top + CELL[0], left:left + CELL[1]] == 255).all()
    # Below each member its true identity is written (a caption line).
    top, left = cell(1, 2)
    assert _ink(picture[top + CELL[0]:top + CELL[0] + pictures.LINE_HEIGHT,
                        left:left + CELL[1]]).any()

    unlabelled = pictures.cluster_picture(paths, labels, None, title="t", cell_size=CELL)
    for row, column in expected:
        top, left = pictures.cluster_cell_origin(row, column, CELL, captions=False)
        assert tuple(unlabelled[top, left]) == pictures.GREY
    assert unlabelled.shape[0] == picture.shape[0] - 2 * pictures.LINE_HEIGHT


def test_cluster_picture_rejects_bad_input(tmp_path):
    paths = [_write_image(tmp_path / "a.png", 0)] * 3
    with pytest.raises(ValueError, match="must agree"):
        pictures.cluster_picture(paths, np.array([0, 0]), title="t")
    with pytest.raises(ValueError, match="every label is -1"):
        pictures.cluster_picture(paths, np.full(3, -1), title="t")


def test_write_clusters_writes_png_and_tensorboard_image(tmp_path):
    paths = [_write_image(tmp_path / f"{i}.png", 20 * i) for i in range(6)]
    labels = np.array([0, 0, 1, 1, 1, -1])
    writer = tf.summary.create_file_writer(str(tmp_path / "summaries"))
    path = pictures.write_clusters(str(tmp_path), 3, paths, labels, seed=0, writer=writer)
    assert path == str(tmp_path / "pictures" / "clusters_epoch003.png")
    written = tf.io.decode_png(tf.io.read_file(path)).numpy()
    assert written.shape[1] >= 10 * 64 and written.shape[2] == 3
    events = glob.glob(str(tmp_path / "summaries" / "events.*"))
    values = [(event.step, value) for event in tf.compat.v1.train.summary_iterator(events[0])
              for value in event.summary.value]
    assert [(step, value.tag) for step, value in values] == [(3, "clusters")]
    value = values[0][1]
    assert value.metadata.plugin_data.plugin_name == "images"
    width, height, png = tf.make_ndarray(value.tensor)
    assert (int(width), int(height)) == (written.shape[1], written.shape[0])
    np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), written)
    assert pictures.write_clusters(str(tmp_path), 4, paths, np.full(6, -1), seed=0) is None


def test_nice_ticks():
    np.testing.assert_allclose(pictures.nice_ticks(0.13, 0.87, 4), [0, .2, .4, .6, .8, 1.0])
    np.testing.assert_allclose(pictures.nice_ticks(3, 47, 5), [0, 10, 20, 30, 40, 50])
    np.testing.assert_allclose(pictures.nice_ticks(1, 3, 5, min_step=1), [1, 2, 3])


def _curve_rows_by_thirds(panel):
    rows, columns = np.nonzero((panel == pictures.CURVE).all(axis=-1))
    thirds = np.array_split(np.unique(columns), 3)
    return [rows[np.isin(columns, part)].mean() for part in thirds]


def test_panel_polyline_rises_for_an_increasing_series():
    rising = _curve_rows_by_thirds(pictures.panel_picture("up", range(1, 7), [1, 2, 3, 4, 5, 6]))
    assert rising[0] > rising[1] > rising[2]  # image rows grow downwards
    falling = _curve_rows_by_thirds(pictures.panel_picture("down", range(1, 7), [6, 5, 4, 3, 2,
                                                                                  1]))
    assert falling[0] < falling[1] < falling[2]
    # Missing values leave gaps in the x range, not a crash; no value at all says so.
    pictures.panel_picture("gaps", [1, 2, 3], [1.0, float("nan"), 2.0])
    assert _ink(pictures.panel_picture("none", [1], [float("nan")])).any()


def test_history_keeps_the_last_record_of_each_epoch(tmp_path):
    workdir = str(tmp_path)
    assert pictures.read_history(workdir) == []
    for epoch, loss in ((1, 5.0), (2, 4.0), (3, 3.0)):
        pictures.append_history(workdir, epoch, {"train/loss": np.float32(loss)})
    # Resumed from the checkpoint of epoch 1 after a cut-short line: epochs 2 and 3 again.
    with open(tmp_path / pictures.HISTORY_FILE, "a") as handle:
        handle.write('{"epoch": 3, "train/lo')
        handle.write("\n")
    pictures.append_history(workdir, 2, {"train/loss": 3.5})
    history = pictures.read_history(workdir)
    assert history == [{"epoch": 1, "train/loss": 5.0}, {"epoch": 2, "train/loss": 3.5}]
    pictures.append_history(workdir, 3, {"train/loss": 2.5, "eval/mAP": 0.25})
    assert [r["epoch"] for r in pictures.read_history(workdir)] == [1, 2, 3]
    lines = (tmp_path / pictures.HISTORY_FILE).read_text().splitlines()
    assert json.loads(lines[-1]) == {"epoch": 3, "train/loss": 2.5, "eval/mAP": 0.25}


def test_write_curves_draws_one_panel_per_scalar_present(tmp_path):
    workdir = str(tmp_path)
    assert pictures.write_curves(workdir) is None
    for epoch in range(1, 4):
        scalars = {"train/loss": 4.0 - epoch, "train/lr": 0.1}
        if epoch > 1:
            scalars.update({"cluster/num_clusters": 10 + epoch, "eval/mAP": 0.1 * epoch})
        pictures.append_history(workdir, epoch, scalars)
    path = pictures.write_curves(workdir)
    assert path == str(tmp_path / "pictures" / "curves.png")
    picture = tf.io.decode_png(tf.io.read_file(path)).numpy()
    height, width = pictures.PANEL_SIZE
    assert picture.shape == (height, 3 * width, 3)  # loss, mAP, clusters; lr has no panel
    six = pictures.curves_picture([{"epoch": 1, name: 1.0} for name, _, _ in pictures.PANELS[:6]])
    assert six.shape == (2 * height, 4 * width, 3)
