"""Market-1501 protocol evaluation (CMC, mAP, mINP) of a distance matrix or streamed from features.

The protocol is torchreid's `eval_market1501` (spec §2): for each query, gallery items with the
same pid AND the same camera are removed; queries left with no true match are skipped; AP is the
step-wise mean of the precision at each true match; mINP (fast-reid) is R / (1-based position of
the last true match). Only the positions of a query's true matches matter, so instead of
arg-sorting each gallery row (what torchreid does) the row is cut at the farthest true match, that
short prefix is sorted, and the true matches are binary-searched into it.

Ties: torchreid's `np.argsort` orders equal distances arbitrarily. Here a true match tied with
other items is ranked before them, and tied true matches take consecutive positions; without ties
the numbers equal torchreid's.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CHUNK_SIZE = 256
METRICS = ("euclidean", "cosine")
_CENTRING_ROWS = 4096  # rows converted to float64 at a time while centring


def pairwise_distance(query_features: np.ndarray, gallery_features: np.ndarray,
                      metric: str = "euclidean") -> np.ndarray:
    """Query x gallery distances, computed in float32 from features centred on the gallery mean.

    Distances do not change under a common translation, and re-ID features often sit in a
    narrow cone (unit vectors whose mean has norm 0.99999): centred, float32 keeps their
    differences, which the plain expansion |q|^2 + |g|^2 - 2 q.g would round away.

    Args:
        query_features: float (Q, D).
        gallery_features: float (G, D).
        metric: 'euclidean' (squared Euclidean distance of the features as given; callers
            L2-normalise them first) or 'cosine' (1 - cosine similarity).

    Returns:
        float32 (Q, G).

    Raises:
        ValueError: unknown metric or mismatched feature shapes.
    """
    query, gallery = _centred(*_check_features(query_features, gallery_features, metric), metric)
    dist = query @ gallery.T
    dist *= -2.0
    dist += np.einsum("ij,ij->i", query, query)[:, None]
    dist += np.einsum("ij,ij->i", gallery, gallery)[None, :]
    np.maximum(dist, 0.0, out=dist)
    if metric == "cosine":
        dist *= 0.5  # 1 - cos(q, g) = |q/|q| - g/|g||^2 / 2
    return dist


class MarketEvaluator:
    """Accumulates CMC, AP and INP over chunks of query rows of a query x gallery distance."""

    def __init__(self, g_pids, g_camids, max_rank: int = 50):
        """Prepares the gallery side.

        Args:
            g_pids: int (G,) gallery identities.
            g_camids: int (G,) gallery cameras.
            max_rank: CMC length; capped at G, as torchreid does.

        Raises:
            ValueError: max_rank < 1 or g_pids and g_camids differ in length.
        """
        self.g_pids = np.asarray(g_pids)
        self.g_camids = np.asarray(g_camids)
        if self.g_pids.shape != self.g_camids.shape or self.g_pids.ndim != 1:
            raise ValueError(f"gallery pids {self.g_pids.shape} and camids "
                             f"{self.g_camids.shape} must be equal-length vectors")
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        self.max_rank = min(max_rank, len(self.g_pids))
        self._first_ranks: list[int] = []  # 0-based position of each valid query's first match
        self._ap_sum = 0.0
        self._inp_sum = 0.0
        # Gallery indices grouped by pid, so a query finds its matches without a G-wide scan.
        order = np.argsort(self.g_pids, kind="stable")
        pids, starts = np.unique(self.g_pids[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        self._members = {pid: order[s:e] for pid, s, e in zip(pids.tolist(), starts, ends)}

    def add(self, distances: np.ndarray, q_pids, q_camids) -> None:
        """Adds queries with their distance rows.

        Args:
            distances: (n, G) distances of n queries to the gallery, smaller is closer. Any
                per-row constant may be added: only the order within a row matters.
            q_pids: int (n,) query identities.
            q_camids: int (n,) query cameras.

        Raises:
            ValueError: mismatched shapes or NaN distances.
        """
        distances = np.asarray(distances)
        q_pids, q_camids = np.asarray(q_pids), np.asarray(q_camids)
        if distances.ndim != 2 or distances.shape[1] != len(self.g_pids) \
                or not len(distances) == len(q_pids) == len(q_camids):
            raise ValueError(f"distances {distances.shape} do not match {len(q_pids)} query "
                             f"pids, {len(q_camids)} camids and {len(self.g_pids)} gallery items")
        # One cheap pass: a NaN anywhere makes the sum NaN.
        if np.isnan(np.sum(distances, dtype=np.float64)):
            raise ValueError("distances contain NaN")
        for row, pid, camid in zip(distances, q_pids.tolist(), q_camids.tolist()):
            members = self._members.get(pid)
            if members is None:
                continue
            same_cam = self.g_camids[members] == camid
            positives = np.sort(row[members[~same_cam]])
            if positives.size == 0:
                continue
            # Everything ranked at or before the last true match, sorted: usually a few % of G.
            prefix = np.sort(np.compress(row <= positives[-1], row))
            removed = np.sort(row[members[same_cam]])
            # 0-based position among kept items = kept items strictly closer.
            ranks = (np.searchsorted(prefix, positives, side="left")
                     - np.searchsorted(removed, positives, side="left"))
            # Tied true matches share that count; give them consecutive positions.
            hits = np.arange(positives.size)
            ranks = np.maximum.accumulate(ranks - hits) + hits
            self._ap_sum += float(np.sum((hits + 1.0) / (ranks + 1.0))) / positives.size
            self._inp_sum += positives.size / (int(ranks[-1]) + 1.0)
            self._first_ranks.append(int(ranks[0]))

    def result(self) -> dict:
        """The metrics over all queries added so far.

        Returns:
            {'mAP': float, 'cmc': float64 (max_rank,), 'mINP': float, 'num_valid_queries': int};
            rates in [0, 1], cmc[k] = fraction of valid queries with a true match in the top k+1.

        Raises:
            ValueError: no valid query (none has a true match in another camera).
        """
        num_valid = len(self._first_ranks)
        if num_valid == 0:
            raise ValueError("no valid query: no query has a gallery match of the same pid "
                             "in another camera")
        first = np.bincount(np.minimum(self._first_ranks, self.max_rank),
                            minlength=self.max_rank + 1)
        return {"mAP": self._ap_sum / num_valid, "cmc": np.cumsum(first[:-1]) / num_valid,
                "mINP": self._inp_sum / num_valid, "num_valid_queries": num_valid}


def evaluate_ranking(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids,
                     max_rank: int = 50) -> dict:
    """CMC, mAP and mINP of a query x gallery distance matrix under the Market protocol.

    Args:
        distmat: (Q, G) distances, smaller is more similar.
        q_pids, g_pids, q_camids, g_camids: int arrays (Q,), (G,), (Q,), (G,).
        max_rank: CMC length (capped at G).

    Returns:
        See MarketEvaluator.result.

    Raises:
        ValueError: shapes disagree, NaN distances, or no query has a valid match.
    """
    distmat = np.asarray(distmat)
    q_pids, q_camids = np.asarray(q_pids), np.asarray(q_camids)
    evaluator = MarketEvaluator(g_pids, g_camids, max_rank)
    for start in range(0, max(len(distmat), 1), DEFAULT_CHUNK_SIZE):
        stop = start + DEFAULT_CHUNK_SIZE
        evaluator.add(distmat[start:stop], q_pids[start:stop], q_camids[start:stop])
    return evaluator.result()


def evaluate_features(query_features: np.ndarray, gallery_features: np.ndarray, q_pids, g_pids,
                      q_camids, g_camids, *, metric: str = "euclidean", max_rank: int = 50,
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict:
    """evaluate_ranking of pairwise_distance, streamed one chunk of queries at a time.

    Never holds the (Q, G) matrix: besides the features and their centred float32 copies
    (see pairwise_distance), memory is one (chunk_size, G) float32 block (84 MB at MSMT17's
    G = 82,161) and small per-row buffers. A block holds the distances minus a per-query
    constant (|g|^2 - 2 q.g of the centred features; for 'cosine', of the centred unit
    features), which ranks each row the same way and saves a pass over it.

    Args:
        query_features, gallery_features: (Q, D) and (G, D).
        q_pids, g_pids, q_camids, g_camids: as in evaluate_ranking.
        metric: see pairwise_distance.
        max_rank: CMC length.
        chunk_size: queries per block.

    Returns:
        See MarketEvaluator.result.

    Raises:
        ValueError: shapes disagree, bad metric, non-finite features, or no valid query.
    """
    query, gallery = _check_features(query_features, gallery_features, metric)
    q_pids, q_camids = np.asarray(q_pids), np.asarray(q_camids)
    if not len(query) == len(q_pids) == len(q_camids):
        raise ValueError(f"{len(query)} query features but {len(q_pids)} pids and "
                         f"{len(q_camids)} camids")
    evaluator = MarketEvaluator(g_pids, g_camids, max_rank)
    if len(evaluator.g_pids) != len(gallery):
        raise ValueError(f"{len(gallery)} gallery features but {len(evaluator.g_pids)} pids")
    if not (np.isfinite(np.einsum("ij,ij->i", gallery, gallery)).all()
            and np.isfinite(np.einsum("ij,ij->i", query, query)).all()):
        raise ValueError("features contain NaN or Inf (or overflow float32)")
    query, gallery = _centred(query, gallery, metric)
    gallery_sq = np.einsum("ij,ij->i", gallery, gallery)
    for start in range(0, max(len(query), 1), chunk_size):
        scores = (-2.0 * query[start:start + chunk_size]) @ gallery.T
        scores += gallery_sq
        evaluator.add(scores, q_pids[start:start + chunk_size],
                      q_camids[start:start + chunk_size])
    return evaluator.result()


def headline_metrics(result: dict, ranks=(1, 5, 10)) -> dict[str, float]:
    """The usual report of an evaluation result: mAP, rank-k accuracies and mINP.

    Args:
        result: what evaluate_ranking / evaluate_features returned.
        ranks: 1-based CMC positions to report (capped at the CMC length).

    Returns:
        {'mAP': ..., 'rank1': ..., 'rank5': ..., 'rank10': ..., 'mINP': ...}, floats in [0, 1].
    """
    cmc = result["cmc"]
    return {"mAP": float(result["mAP"]),
            **{f"rank{k}": float(cmc[min(k, len(cmc)) - 1]) for k in ranks},
            "mINP": float(result["mINP"])}


def top_matches(distances: np.ndarray, q_pids, q_camids, g_pids, g_camids, k: int) -> np.ndarray:
    """The k nearest gallery indices of each query, same-pid-same-camera items removed.

    Meant for a few rows (rank lists), e.g. pairwise_distance of the chosen queries.

    Args:
        distances: (n, G) distances of n queries.
        q_pids, q_camids: int (n,) query identities and cameras.
        g_pids, g_camids: int (G,) gallery identities and cameras.
        k: matches per query.

    Returns:
        int64 (n, k), nearest first (ties by gallery index); -1 pads rows with fewer than k
        kept items.
    """
    junk = ((np.asarray(g_pids)[None, :] == np.asarray(q_pids)[:, None])
            & (np.asarray(g_camids)[None, :] == np.asarray(q_camids)[:, None]))
    dist = np.where(junk, np.inf, distances)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    order[np.isinf(np.take_along_axis(dist, order, 1))] = -1
    return np.pad(order, ((0, 0), (0, k - order.shape[1])), constant_values=-1)


def _centred(query: np.ndarray, gallery: np.ndarray, metric: str):
    """float32 features (unit rows first for 'cosine') minus the gallery's mean, via float64."""
    def prepared(features: np.ndarray, start: int) -> np.ndarray:
        rows = features[start:start + _CENTRING_ROWS].astype(np.float64)
        if metric == "cosine":
            rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        return rows

    total = np.zeros(gallery.shape[1], np.float64)
    for start in range(0, len(gallery), _CENTRING_ROWS):
        total += prepared(gallery, start).sum(axis=0)
    mean = total / max(len(gallery), 1)
    centred = []
    for features in (query, gallery):
        out = np.empty_like(features)
        for start in range(0, len(features), _CENTRING_ROWS):
            out[start:start + _CENTRING_ROWS] = prepared(features, start) - mean
        centred.append(out)
    return centred


def _check_features(query_features, gallery_features, metric: str):
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    query = np.asarray(query_features, np.float32)
    gallery = np.asarray(gallery_features, np.float32)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"features must be (Q, D) and (G, D); got {query.shape} and "
                         f"{gallery.shape}")
    return query, gallery
