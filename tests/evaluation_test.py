"""Tests for mlc_tf.evaluation: hand-worked cases and a plain transcription of torchreid's loop."""

import numpy as np
import pytest

from mlc_tf import evaluation


def _torchreid_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Plain-numpy transcription of torchreid's eval_market1501 (with fast-reid's mINP)."""
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    num_valid_q = 0.0
    for q_idx in range(num_q):
        q_pid, q_camid = q_pids[q_idx], q_camids[q_idx]
        order = indices[q_idx]
        remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid)
        keep = np.invert(remove)
        raw_cmc = matches[q_idx][keep]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        max_pos_idx = np.max(np.where(raw_cmc == 1))
        all_inp.append(cmc[max_pos_idx] / (max_pos_idx + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_valid_q += 1.0
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = np.asarray([x / (i + 1.0) for i, x in enumerate(tmp_cmc)]) * raw_cmc
        all_ap.append(tmp_cmc.sum() / num_rel)
    assert num_valid_q > 0, "Error: all query identities do not appear in gallery"
    all_cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid_q
    return {"mAP": np.mean(all_ap), "cmc": all_cmc, "mINP": np.mean(all_inp),
            "num_valid_queries": int(num_valid_q)}


def _assert_same(result, expected):
    assert result["num_valid_queries"] == expected["num_valid_queries"]
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert result["mINP"] == pytest.approx(expected["mINP"], abs=1e-9)
    np.testing.assert_allclose(result["cmc"], expected["cmc"], atol=1e-6)


# Two hand-worked cases. Gallery (pid, cam) and distances per row; "x" = removed (same pid and
# camera as the query), "+" = true match, "-" = wrong.
HAND_GALLERY_PIDS = np.array([1, 2, 1, 3, 1, 0])
HAND_GALLERY_CAMS = np.array([0, 0, 1, 1, 2, 1])
HAND_DISTANCES = np.array([
    # q0 (pid 1, cam 0): by distance g0 x, g1 -, g2 +, g3 -, g5 -, g4 +.
    # Kept list: - + - - +  -> matches at 1-based positions 2 and 5.
    # AP = (1/2 + 2/5) / 2 = 0.45; first match at position 2; mINP = 2 / 5 = 0.4.
    [0.1, 0.2, 0.3, 0.4, 0.6, 0.5],
    # q1 (pid 2, cam 1): g1 (pid 2, cam 0) is the nearest -> AP 1, position 1, mINP 1.
    [0.9, 0.1, 0.5, 0.6, 0.7, 0.8],
    # q2 (pid 1, cam 2): by distance g4 x, g5 -, g3 -, g0 +, g1 -, g2 +.
    # Kept list: - - + - +  -> matches at positions 3 and 5.
    # AP = (1/3 + 2/5) / 2 = 11/30; first match at position 3; mINP = 2 / 5.
    [0.4, 0.5, 0.6, 0.3, 0.1, 0.2],
    # q3 (pid 3, cam 1): its only gallery image g3 is in cam 1 and removed -> skipped.
    [0.5, 0.4, 0.3, 0.1, 0.2, 0.6],
])
HAND_QUERY_PIDS = np.array([1, 2, 1, 3])
HAND_QUERY_CAMS = np.array([0, 1, 2, 1])


def test_hand_worked_case():
    result = evaluation.evaluate_ranking(HAND_DISTANCES, HAND_QUERY_PIDS, HAND_GALLERY_PIDS,
                                         HAND_QUERY_CAMS, HAND_GALLERY_CAMS, max_rank=5)
    assert result["num_valid_queries"] == 3
    assert result["mAP"] == pytest.approx((0.45 + 1.0 + 11 / 30) / 3)
    assert result["mINP"] == pytest.approx((0.4 + 1.0 + 0.4) / 3)
    # First matches at positions 2, 1, 3.
    np.testing.assert_allclose(result["cmc"], [1 / 3, 2 / 3, 1.0, 1.0, 1.0])
    expected = _torchreid_market1501(HAND_DISTANCES, HAND_QUERY_PIDS, HAND_GALLERY_PIDS,
                                     HAND_QUERY_CAMS, HAND_GALLERY_CAMS, 5)
    _assert_same(result, expected)


def test_max_rank_is_capped_at_gallery_size():
    result = evaluation.evaluate_ranking(HAND_DISTANCES, HAND_QUERY_PIDS, HAND_GALLERY_PIDS,
                                         HAND_QUERY_CAMS, HAND_GALLERY_CAMS)
    assert result["cmc"].shape == (6,)
    assert result["cmc"][0] == pytest.approx(1 / 3)


def test_streamed_features_hand_case():
    # 2-d features; the query (pid 1, cam 0) is (1, 0).
    #   g0 = 4 (0.6, 0.8)   pid 1, cam 1: cos 0.6, squared distance 1.4^2 + 3.2^2 = 12.2
    #   g1 = 2 (0.8, 0.6)   pid 2, cam 1: cos 0.8, distance 0.6^2 + 1.2^2 = 1.8
    #   g2 = 8 (0, 1)       pid 1, cam 2: cos 0,   distance 1 + 64 = 65
    #   g3 = 0.5 (1, 0)     pid 1, cam 0: removed
    #   g4 = 0.5 (-0.6, 0.8) pid 3, cam 0: cos -0.6, distance 1.3^2 + 0.4^2 = 1.85
    # Cosine kept order g1 - g0 + g2 + g4 -: AP = (1/2 + 2/3) / 2 = 7/12, mINP = 2/3.
    # Euclidean kept order g1 - g4 - g0 + g2 +: AP = (1/3 + 2/4) / 2 = 5/12, mINP = 2/4.
    gallery = np.array([[2.4, 3.2], [1.6, 1.2], [0.0, 8.0], [0.5, 0.0], [-0.3, 0.4]])
    labels = dict(q_pids=[1], g_pids=[1, 2, 1, 1, 3], q_camids=[0], g_camids=[1, 1, 2, 0, 0])
    cosine = evaluation.evaluate_features([[1.0, 0.0]], gallery, **labels, metric="cosine",
                                          max_rank=4)
    assert cosine["mAP"] == pytest.approx(7 / 12)
    assert cosine["mINP"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(cosine["cmc"], [0.0, 1.0, 1.0, 1.0])
    euclidean = evaluation.evaluate_features([[1.0, 0.0]], gallery, **labels, max_rank=4)
    assert euclidean["mAP"] == pytest.approx(5 / 12)
    assert euclidean["mINP"] == pytest.approx(2 / 4)
    np.testing.assert_allclose(euclidean["cmc"], [0.0, 0.0, 1.0, 1.0])


def _random_case(rng, num_q=80, num_g=500, num_ids=40, num_cams=6, dim=16, noise=1.2):
    """Clustered features; some gallery-only identities act as distractors."""
    centres = rng.normal(size=(num_ids + 10, dim))
    q_pids = rng.integers(0, num_ids, num_q)
    g_pids = rng.integers(0, num_ids + 10, num_g)
    q_camids = rng.integers(0, num_cams, num_q)
    g_camids = rng.integers(0, num_cams, num_g)
    q_feat = centres[q_pids] + rng.normal(scale=noise, size=(num_q, dim))
    g_feat = centres[g_pids] + rng.normal(scale=noise, size=(num_g, dim))
    return q_feat, g_feat, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_torchreid_transcription(seed):
    rng = np.random.default_rng(seed)
    q_feat, g_feat, q_pids, g_pids, q_camids, g_camids = _random_case(
        rng, noise=[0.3, 1.0, 1.5, 3.0][seed])
    distmat = ((q_feat[:, None, :] - g_feat[None]) ** 2).sum(-1)
    expected = _torchreid_market1501(distmat, q_pids, g_pids, q_camids, g_camids, 50)
    result = evaluation.evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids, 50)
    _assert_same(result, expected)


def test_streaming_matches_torchreid_transcription():
    # Small integer features: every float32 product and sum is exact whatever the BLAS, so the
    # streamed ranking can be compared with exact float64 distances.
    rng = np.random.default_rng(11)
    num_q, num_g, num_ids, dim = 200, 300, 30, 6
    centres = rng.integers(-600, 601, (num_ids + 5, dim))
    q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids + 5, num_g)
    q_camids, g_camids = rng.integers(0, 5, num_q), rng.integers(0, 5, num_g)
    q_feat = centres[q_pids] + rng.integers(-250, 251, (num_q, dim))
    g_feat = centres[g_pids] + rng.integers(-250, 251, (num_g, dim))
    distmat = ((q_feat[:, None, :] - g_feat[None]) ** 2).sum(-1).astype(np.float64)
    # No true match shares its distance with another item, so torchreid's arbitrary tie order
    # cannot matter.
    for row, pid in zip(distmat, q_pids):
        values, counts = np.unique(row, return_counts=True)
        assert not np.isin(row[g_pids == pid], values[counts > 1]).any()
    expected = _torchreid_market1501(distmat, q_pids, g_pids, q_camids, g_camids, 20)
    assert 0.2 < expected["mAP"] < 0.9  # neither trivial nor hopeless
    for chunk_size in (1, 37, 1000):
        result = evaluation.evaluate_features(q_feat.astype(np.float32), g_feat.astype(np.float32),
                                              q_pids, g_pids, q_camids, g_camids, max_rank=20,
                                              chunk_size=chunk_size)
        _assert_same(result, expected)


def test_evaluator_accumulates_chunks_in_any_split():
    q_feat, g_feat, q_pids, g_pids, q_camids, g_camids = _random_case(np.random.default_rng(4))
    distmat = evaluation.pairwise_distance(q_feat, g_feat)
    evaluator = evaluation.MarketEvaluator(g_pids, g_camids, max_rank=10)
    for rows in (slice(0, 3), slice(3, 50), slice(50, None)):
        evaluator.add(distmat[rows], q_pids[rows], q_camids[rows])
    _assert_same(evaluator.result(), evaluation.evaluate_ranking(
        distmat, q_pids, g_pids, q_camids, g_camids, 10))


def test_tied_matches_get_consecutive_positions_before_tied_misses():
    # Gallery: g0 (pid 1, cam 1) and g1 (pid 1, cam 2) at 0.5, g2 (pid 2) at 0.1, g3 (pid 3)
    # tied with the matches at 0.5. Matches take positions 2 and 3, the tied miss goes after
    # them: AP = (1/2 + 2/3) / 2, mINP = 2/3.
    distmat = np.array([[0.5, 0.5, 0.1, 0.5]])
    result = evaluation.evaluate_ranking(distmat, [1], [1, 1, 2, 3], [0], [1, 2, 1, 1],
                                         max_rank=3)
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert result["mINP"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(result["cmc"], [0.0, 1.0, 1.0])


def test_removed_items_tied_with_a_match_do_not_count():
    # g0 (pid 1, cam 0) is removed for the query (pid 1, cam 0); at the same distance as the
    # match g1, it must not push the match down: AP 1.
    result = evaluation.evaluate_ranking([[0.2, 0.2, 0.3]], [1], [1, 1, 2], [0], [0, 1, 0])
    assert result["mAP"] == pytest.approx(1.0)


def test_pairwise_distance():
    query = np.array([[1.0, 0.0], [0.0, 2.0]])
    gallery = np.array([[1.0, 0.0], [3.0, 4.0]])
    # |(1,0)-(3,4)|^2 = 4 + 16; |(0,2)-(1,0)|^2 = 1 + 4; |(0,2)-(3,4)|^2 = 9 + 4.
    np.testing.assert_allclose(evaluation.pairwise_distance(query, gallery),
                               [[0.0, 20.0], [5.0, 13.0]], atol=1e-5)
    # cos((1,0),(3,4)) = 3/5; cos((0,2),(1,0)) = 0; cos((0,2),(3,4)) = 4/5.
    np.testing.assert_allclose(evaluation.pairwise_distance(query, gallery, "cosine"),
                               [[0.0, 0.4], [1.0, 0.2]], atol=1e-6)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluation.pairwise_distance(query, gallery, "manhattan")


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_features_in_a_narrow_cone_rank_as_in_float64(metric, monkeypatch):
    monkeypatch.setattr(evaluation, "_CENTRING_ROWS", 7)  # centre in several blocks
    # Unit features whose mean has norm 0.99999, as a trained network's pooled features have.
    rng = np.random.default_rng(7)
    centre = rng.normal(size=64)
    def unit(n):
        x = centre / np.linalg.norm(centre) + 5e-4 * rng.normal(size=(n, 64))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    query, gallery = unit(40), unit(300)
    labels = dict(q_pids=rng.integers(0, 30, 40), g_pids=rng.integers(0, 30, 300),
                  q_camids=rng.integers(0, 4, 40), g_camids=rng.integers(0, 4, 300))
    q64, g64 = query.astype(np.float64), gallery.astype(np.float64)
    if metric == "cosine":
        exact = 1.0 - (q64 / np.linalg.norm(q64, axis=1, keepdims=True)) @ (
            g64 / np.linalg.norm(g64, axis=1, keepdims=True)).T
    else:
        exact = ((q64[:, None, :] - g64[None, :, :]) ** 2).sum(-1)
    assert np.linalg.norm(np.concatenate([query, gallery]).mean(0)) > 0.9999
    # The plain float32 expansion rounds most of these distances onto a few levels.
    plain = (query @ gallery.T) * -2.0 + 2.0
    assert np.mean([len(np.unique(row)) for row in plain]) < 0.5 * gallery.shape[0]
    expected = _torchreid_market1501(exact, *labels.values(), max_rank=50)
    _assert_same(evaluation.evaluate_features(query, gallery, **labels, metric=metric,
                                              chunk_size=16), expected)
    np.testing.assert_allclose(evaluation.pairwise_distance(query, gallery, metric), exact,
                               rtol=1e-3, atol=1e-8)


def test_top_matches_removes_same_camera_matches():
    distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    top = evaluation.top_matches(distmat, [1, 2], [0, 1], [1, 2, 1], [0, 0, 1], k=4)
    # Row 0: g0 is removed (pid 1, cam 0). Row 1 (pid 2, cam 1): nothing removed.
    np.testing.assert_array_equal(top, [[1, 2, -1, -1], [2, 1, 0, -1]])


def test_bad_input():
    with pytest.raises(ValueError, match="no valid query"):
        evaluation.evaluate_ranking(np.zeros((1, 2)), [5], [1, 2], [0], [0, 0])
    with pytest.raises(ValueError, match="query pids"):
        evaluation.evaluate_ranking(np.zeros((2, 2)), [5], [1, 2], [0], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        evaluation.evaluate_ranking([[0.1, np.nan]], [1], [1, 1], [0], [1, 2])
    with pytest.raises(ValueError, match="NaN or Inf"):
        evaluation.evaluate_features([[np.inf, 0.0]], [[1.0, 0.0]], [1], [1], [0], [1])
    with pytest.raises(ValueError, match=r"\(Q, D\)"):
        evaluation.evaluate_features(np.zeros((2, 3)), np.zeros((4, 2)), [1, 1], [1] * 4,
                                     [0, 0], [1] * 4)
    with pytest.raises(ValueError, match="max_rank"):
        evaluation.MarketEvaluator([1], [0], max_rank=0)


def test_headline_metrics():
    result = evaluation.evaluate_ranking(HAND_DISTANCES, HAND_QUERY_PIDS, HAND_GALLERY_PIDS,
                                         HAND_QUERY_CAMS, HAND_GALLERY_CAMS)
    headline = evaluation.headline_metrics(result)
    assert list(headline) == ["mAP", "rank1", "rank5", "rank10", "mINP"]
    # The CMC has only 6 entries (the gallery size): rank-10 reads its last one.
    assert headline["rank1"] == pytest.approx(1 / 3)
    assert headline["rank5"] == headline["rank10"] == 1.0
    assert headline["mAP"] == pytest.approx(result["mAP"])
