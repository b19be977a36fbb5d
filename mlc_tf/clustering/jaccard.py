"""Sparse k-reciprocal encoding and Jaccard distance (Zhong et al. CVPR 2017), memory O(N*k)."""

from typing import Callable

import numba
import numpy as np
import scipy.sparse

from mlc_tf.clustering.knn import Neighbours

VARIANTS = ("zhong", "spcl")
# Rows per vectorised block of the set computations: bounds temporaries to a few tens of MB.
_BLOCK_ROWS = 2048
# Rows per call of the compiled Jaccard kernel (also the progress granularity).
_KERNEL_ROWS = 4096


def required_list_length(k1: int) -> int:
    """kNN list length (self included) the sparse path reads: top(i, k1 + 1).

    With exact lists of this length and the exact row maximum (`Neighbours.row_max` from the
    exact backend), the sparse encoding equals the dense reference: the reciprocal sets, the
    expansion (round(k1/2) + 1 <= k1 + 1) and the query expansion (k2 <= k1 + 1) read nothing
    further down the ranking, and distances to expansion members outside the list are
    recomputed from the features.
    """
    return k1 + 1


def reciprocal_mask(indices: np.ndarray, k: int) -> np.ndarray:
    """mask[i, s] = indices[i, s] is a k-reciprocal neighbour of i, for s < k + 1.

    R(i, k) = {j in top(i, k + 1) : i in top(j, k + 1)}, top lists including the point itself.

    Args:
        indices: (N, L) neighbour lists, self first, L >= k + 1.
        k: the k of R(i, k).

    Returns:
        (N, k + 1) bool.
    """
    top = indices[:, :k + 1]
    mask = np.empty(top.shape, bool)
    for start in range(0, len(top), _BLOCK_ROWS):
        rows = np.arange(start, min(len(top), start + _BLOCK_ROWS))
        mask[rows] = (top[top[rows]] == rows[:, None, None]).any(axis=2)
    return mask


def expanded_sets(indices: np.ndarray, k1: int, rows: np.ndarray) -> np.ndarray:
    """R*(i) for the given rows: R(i, k1) plus each R(c, round(k1/2)) passing the 2/3 rule.

    Args:
        indices: (N, L) neighbour lists, self first, L >= k1 + 1.
        k1: k-reciprocal parameter.
        rows: row numbers to expand.

    Returns:
        (len(rows), M) int64 sorted members per row, padded at the end with -1.
    """
    half = int(np.around(k1 / 2))  # Zhong's Python rounding (half to even), as published.
    mask = _rows_mask(indices, k1, rows)
    top = indices[rows, :k1 + 1]
    own = np.where(mask, top, -1)  # R(i, k1), -1 padded.
    cand_top = indices[top, :half + 1]  # (B, k1 + 1, half + 1)
    cand_mask = _rows_mask(indices, half, top.ravel()).reshape(cand_top.shape)
    cand_sets = np.where(cand_mask, cand_top, -2)  # R(c, half); -2 never matches a -1 pad.
    size = cand_mask.sum(axis=2)
    common = (cand_sets[..., None] == own[:, None, None, :]).any(axis=3).sum(axis=2)
    # Zhong: len(intersect1d(R(c, half), R(i, k1))) > 2/3 * len(R(c, half)); sets are unique.
    accept = mask & (common > 2 / 3 * size)
    added = np.where(accept[..., None] & cand_mask, cand_top, -1).reshape(len(rows), -1)
    members = np.sort(np.concatenate([own, added], axis=1), axis=1)
    invalid = members < 0
    invalid[:, 1:] |= members[:, 1:] == members[:, :-1]
    # Stable sort on the flag moves the unique members, still ascending, to the front.
    order = np.argsort(invalid, axis=1, kind="stable")
    members = np.where(np.take_along_axis(invalid, order, axis=1), -1,
                       np.take_along_axis(members, order, axis=1))
    return members[:, :max(1, int((~invalid).sum(axis=1).max()))]


def _rows_mask(indices: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    """reciprocal_mask restricted to the given rows."""
    top = indices[rows, :k + 1]
    return (indices[top, :k + 1] == rows[:, None, None]).any(axis=2)


def encode(features: np.ndarray, nbrs: Neighbours, k1: int, variant: str = "zhong",
           progress: Callable[[float], None] | None = None) -> scipy.sparse.csr_matrix:
    """The k-reciprocal encoding V: row i holds normalised weights exp(-d) over R*(i).

    Args:
        features: (N, d) features the neighbours were computed from.
        nbrs: neighbour lists of length >= k1 + 1, self first.
        k1: k-reciprocal parameter.
        variant: 'zhong' (d = squared distance / row maximum) or 'spcl' (d = squared distance).
        progress: optional callback receiving the completed fraction.

    Returns:
        (N, N) float32 CSR matrix whose rows sum to 1.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    x = np.asarray(features, np.float32)
    n = len(x)
    sq_norm = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    row_parts, col_parts, val_parts = [], [], []
    for start in range(0, n, _BLOCK_ROWS):
        rows = np.arange(start, min(n, start + _BLOCK_ROWS))
        members = expanded_sets(nbrs.indices, k1, rows)
        valid = members >= 0
        dist = _member_distances(x, sq_norm, nbrs, rows, members, valid)
        if variant == "zhong":
            scale = np.maximum(nbrs.row_max[rows].astype(np.float64), np.finfo(np.float32).tiny)
            dist = dist / scale[:, None]
        weight = np.where(valid, np.exp(-dist), 0.0)
        weight /= weight.sum(axis=1, keepdims=True)
        row_parts.append(np.broadcast_to(rows[:, None], members.shape)[valid])
        col_parts.append(members[valid])
        val_parts.append(weight[valid].astype(np.float32))
        if progress is not None:
            progress(rows[-1] / max(1, n - 1))
    return scipy.sparse.csr_matrix(
        (np.concatenate(val_parts), (np.concatenate(row_parts), np.concatenate(col_parts))),
        shape=(n, n))


def _member_distances(x, sq_norm, nbrs, rows, members, valid) -> np.ndarray:
    """Squared distances from each row to its members: from the list, else from the features."""
    listed = nbrs.indices[rows]
    hit = members[:, :, None] == listed[:, None, :]
    found = hit.any(axis=2)
    dist = np.where(found, np.take_along_axis(
        nbrs.sq_distances[rows], hit.argmax(axis=2), axis=1), 0.0).astype(np.float64)
    missing = valid & ~found
    if missing.any():
        r, c = np.nonzero(missing)
        i, j = rows[r], members[r, c]
        dots = np.einsum("ij,ij->i", x[i], x[j], dtype=np.float64)
        dist[r, c] = np.maximum(sq_norm[i] + sq_norm[j] - 2.0 * dots, 0.0)
    return dist


def query_expand(encoding: scipy.sparse.csr_matrix, indices: np.ndarray,
                 k2: int) -> scipy.sparse.csr_matrix:
    """Local query expansion: row i becomes the mean of the rows of its first k2 neighbours."""
    if k2 <= 1:
        return encoding
    n = encoding.shape[0]
    first = indices[:, :k2]
    average = scipy.sparse.csr_matrix(
        (np.full(first.size, 1.0 / first.shape[1], np.float32),
         (np.repeat(np.arange(n), first.shape[1]), first.ravel())), shape=(n, n))
    return (average @ encoding).tocsr()


def jaccard(encoding: scipy.sparse.csr_matrix, rows: np.ndarray | None = None,
            max_distance: float = 1.0,
            progress: Callable[[float], None] | None = None) -> scipy.sparse.csr_matrix:
    """Jaccard distance 1 - m/(2 - m), m = sum_k min(V_ik, V_jk), for pairs sharing a column.

    Args:
        encoding: (N, N) CSR encoding with rows summing to 1.
        rows: rows to compute (default all); the result has len(rows) rows in that order.
        max_distance: only pairs with distance <= this (and < 1) are stored.
        progress: optional callback receiving the completed fraction.

    Returns:
        (len(rows), N) float32 CSR; the diagonal of row i (column i) is an explicit 0, and
        every pair left out has distance > max_distance (1 when they share no column).
    """
    rows = np.arange(encoding.shape[0]) if rows is None else np.asarray(rows, np.int64)
    v = encoding.tocsr()
    v.sort_indices()
    columns = v.tocsc()  # The inverted index: which rows use each column.
    parts = []
    for start in range(0, len(rows), _KERNEL_ROWS):
        chunk = rows[start:start + _KERNEL_ROWS]
        r, c, d = _min_overlap(chunk, v.indptr, v.indices, v.data, columns.indptr,
                               columns.indices, columns.data, float(max_distance))
        parts.append((r + start, c, d))
        if progress is not None:
            progress(min(1.0, (start + len(chunk)) / len(rows)))
    out = scipy.sparse.csr_matrix(
        (np.concatenate([p[2] for p in parts]),
         (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))),
        shape=(len(rows), encoding.shape[0]))
    out.sort_indices()
    return out


@numba.njit(cache=True, nogil=True)
def _min_overlap(rows, indptr, indices, data, col_ptr, col_rows, col_data, max_distance):
    """Single-threaded kernel: for each row, accumulate min() over shared columns, emit pairs."""
    n = len(col_ptr) - 1
    acc = np.zeros(n, np.float64)
    seen = np.zeros(n, np.bool_)
    touched = np.empty(n, np.int64)
    cap = 64 * len(rows) + 16
    out_r = np.empty(cap, np.int64)
    out_c = np.empty(cap, np.int64)
    out_d = np.empty(cap, np.float32)
    count = 0
    for local in range(len(rows)):
        i = rows[local]
        num_touched = 0
        for p in range(indptr[i], indptr[i + 1]):
            col = indices[p]
            value = data[p]
            for q in range(col_ptr[col], col_ptr[col + 1]):
                j = col_rows[q]
                if not seen[j]:
                    seen[j] = True
                    touched[num_touched] = j
                    num_touched += 1
                acc[j] += min(value, col_data[q])
        for t in range(num_touched):
            j = touched[t]
            m = min(acc[j], 1.0)  # Rounding can push the overlap of a row with itself past 1.
            dist = 0.0 if j == i else 1.0 - m / (2.0 - m)
            if dist <= max_distance and dist < 1.0:
                if count == cap:
                    cap *= 2
                    out_r = np.concatenate((out_r, np.empty(cap - count, np.int64)))
                    out_c = np.concatenate((out_c, np.empty(cap - count, np.int64)))
                    out_d = np.concatenate((out_d, np.empty(cap - count, np.float32)))
                out_r[count] = local
                out_c[count] = j
                out_d[count] = dist
                count += 1
            acc[j] = 0.0
            seen[j] = False
    return out_r[:count], out_c[:count], out_d[:count]


def sparse_jaccard(features: np.ndarray, nbrs: Neighbours, k1: int = 20, k2: int = 6,
                   variant: str = "zhong", max_distance: float = 1.0,
                   progress: Callable[[float], None] | None = None) -> scipy.sparse.csr_matrix:
    """Encoding, query expansion and Jaccard distance for all points, in one call.

    Args:
        features: (N, d) features.
        nbrs: neighbour lists of length >= required_list_length(k1), self first.
        k1: k-reciprocal parameter.
        k2: query-expansion length (k2 <= k1 + 1).
        variant: 'zhong' or 'spcl'.
        max_distance: only pairs at most this far apart are stored.
        progress: optional callback receiving the completed fraction.

    Returns:
        (N, N) float32 symmetric CSR with explicit zeros on the diagonal.
    """
    if nbrs.indices.shape[1] < max(required_list_length(k1), k2):
        raise ValueError(f"neighbour lists of length {nbrs.indices.shape[1]} are too short for "
                         f"k1={k1}, k2={k2}")
    # The encoding takes about a third of the time, the Jaccard kernel the rest.
    first = None if progress is None else (lambda f: progress(f / 3))
    rest = None if progress is None else (lambda f: progress(1 / 3 + 2 * f / 3))
    encoding = query_expand(encode(features, nbrs, k1, variant, first), nbrs.indices, k2)
    return jaccard(encoding, max_distance=max_distance, progress=rest)
