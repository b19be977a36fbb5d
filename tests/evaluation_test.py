"""Tests for mlc_tf.evaluation against hand-worked cases and a plain per-query loop."""

import numpy as np
import pytest

from mlc_tf import evaluation


def _reference_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Independent plain loop in the manner of torchreid's eval_market1501 (+ fast-reid mINP)."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(num_q):
        order = np.argsort(distmat[q], kind="stable")
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        relevant = (g_pids[order] == q_pids[q])[keep].astype(np.int64)
        if not relevant.any():
            continue
        cumulative = relevant.cumsum()
        last = np.max(np.where(relevant == 1))
        all_inp.append(cumulative[last] / (last + 1.0))
        cmc = np.minimum(cumulative, 1)
        all_cmc.append(cmc[:max_rank])
        precision = np.array([c / (i + 1.0) for i, c in enumerate(cumulative)])
        all_ap.append((precision * relevant).sum() / relevant.sum())
    return {"mAP": np.mean(all_ap), "cmc": np.mean(all_cmc, axis=0), "mINP": np.mean(all_inp),
            "num_valid_queries": len(all_ap)}


def test_hand_worked_case():
    # Query 0 (pid 1, cam 0). Gallery by distance: g0 (pid 1, cam 0: removed), g1 (pid 2),
    # g2 (pid 1, cam 1), g3 (pid 3), g4 (pid 1, cam 2).
    # Kept ranking: g1 miss, g2 hit (rank 2), g3 miss, g4 hit (rank 4).
    # AP = (1/2 + 2/4) / 2 = 0.5; first hit at rank 2; mINP = 2 / 4 = 0.5.
    # Query 1 (pid 2, cam 1): g1 (pid 2, cam 0) nearest -> AP 1, rank 1, mINP 1.
    # Query 2 (pid 9): no match anywhere -> skipped.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5],
                        [0.9, 0.1, 0.5, 0.6, 0.7],
                        [0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids = np.array([1, 2, 1, 3, 1])
    g_camids = np.array([0, 0, 1, 1, 2])
    result = evaluation.evaluate_ranking(distmat, np.array([1, 2, 9]), g_pids,
                                         np.array([0, 1, 0]), g_camids, max_rank=4)
    assert result["num_valid_queries"] == 2
    assert result["mAP"] == pytest.approx((0.5 + 1.0) / 2)
    assert result["mINP"] == pytest.approx((0.5 + 1.0) / 2)
    np.testing.assert_allclose(result["cmc"], [0.5, 1.0, 1.0, 1.0])


def _random_case(rng, num_q=60, num_g=400, num_ids=40, num_cams=6, dim=16):
    ids = rng.normal(size=(num_ids, dim))
    q_pids = rng.integers(0, num_ids, num_q)
    g_pids = rng.integers(0, num_ids + 10, num_g)  # some gallery-only (distractor) ids
    q_camids = rng.integers(0, num_cams, num_q)
    g_camids = rng.integers(0, num_cams, num_g)
    all_ids = np.concatenate([ids, rng.normal(size=(10, dim))])
    q_feat = all_ids[q_pids] + rng.normal(scale=1.2, size=(num_q, dim))
    g_feat = all_ids[g_pids] + rng.normal(scale=1.2, size=(num_g, dim))
    return q_feat, g_feat, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_loop(seed):
    q_feat, g_feat, q_pids, g_pids, q_camids, g_camids = _random_case(np.random.default_rng(seed))
    distmat = evaluation.pairwise_distance(q_feat, g_feat).astype(np.float64)
    expected = _reference_market1501(distmat, q_pids, g_pids, q_camids, g_camids, 50)
    result = evaluation.evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids, 50)
    assert result["num_valid_queries"] == expected["num_valid_queries"]
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert result["mINP"] == pytest.approx(expected["mINP"], abs=1e-9)
    np.testing.assert_allclose(result["cmc"], expected["cmc"], atol=1e-9)


def test_streaming_equals_matrix_evaluation():
    q_feat, g_feat, q_pids, g_pids, q_camids, g_camids = _random_case(np.random.default_rng(3))
    distmat = evaluation.pairwise_distance(q_feat, g_feat)
    full = evaluation.evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids)
    streamed = evaluation.evaluate_features(q_feat, g_feat, q_pids, g_pids, q_camids, g_camids,
                                            chunk_size=7, return_topk=10)
    assert streamed["mAP"] == pytest.approx(full["mAP"], abs=1e-12)
    np.testing.assert_allclose(streamed["cmc"], full["cmc"])
    expected_top = evaluation.top_matches(distmat, q_pids, q_camids, g_pids, g_camids, 10)
    np.testing.assert_array_equal(streamed["topk"], expected_top)


def test_tied_positives_get_consecutive_ranks():
    # Two true matches at the same distance behind one miss: ranks 2 and 3, AP = (1/2 + 2/3)/2.
    distmat = np.array([[0.5, 0.5, 0.1]])
    result = evaluation.evaluate_ranking(distmat, np.array([1]), np.array([1, 1, 2]),
                                         np.array([0]), np.array([1, 2, 1]), max_rank=3)
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert result["mINP"] == pytest.approx(2 / 3)


def test_distances():
    query = np.array([[1.0, 0.0], [0.0, 2.0]])
    gallery = np.array([[1.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(evaluation.pairwise_distance(query, gallery),
                               [[0.0, 20.0], [5.0, 13.0]], atol=1e-5)
    np.testing.assert_allclose(evaluation.pairwise_distance(query, gallery, "cosine"),
                               [[0.0, 0.4], [1.0, 0.2]], atol=1e-6)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluation.pairwise_distance(query, gallery, "manhattan")


def test_top_matches_removes_same_camera_matches():
    distmat = np.array([[0.1, 0.2, 0.3]])
    top = evaluation.top_matches(distmat, np.array([1]), np.array([0]), np.array([1, 2, 1]),
                                 np.array([0, 0, 1]), k=4)
    np.testing.assert_array_equal(top, [[1, 2, -1, -1]])


def test_bad_input():
    with pytest.raises(ValueError, match="no valid query"):
        evaluation.evaluate_ranking(np.zeros((1, 2)), np.array([5]), np.array([1, 2]),
                                    np.array([0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="query pids"):
        evaluation.evaluate_ranking(np.zeros((2, 2)), np.array([5]), np.array([1, 2]),
                                    np.array([0]), np.array([0, 0]))
