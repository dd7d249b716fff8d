"""The k nearest neighbours of every face by cosine similarity, in time close to linear in the face count.

Embeddings are unit vectors, so cosine similarity is the inner product. Up to `exact_limit` faces the
search is exact (FAISS brute force, BLAS). Above it:

1. candidates are searched in a PCA projection to 64 dimensions: face embeddings are far from isotropic,
   identities differ mostly along the leading components, so the nearest faces there include the true
   neighbours (on LFW-shaped data all same-person neighbours above the link threshold are among 2k);
2. in that space FAISS k-means splits the faces into about sqrt(n) cells, and each face is compared with
   the faces of its `probes` nearest cells, as an IVF index does; but the work is batched per cell (the
   cell's faces against every face probing it, one matrix product), so it runs at BLAS speed instead of
   one query at a time (~15x faster on 2 cores);
3. the candidates are re-scored with the full embeddings, so every similarity returned is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

# Cells hold ~sqrt(n) faces; k-means is trained on this many faces per cell (FAISS' own lower bound).
_TRAINING_FACES_PER_CELL = 40
_KMEANS_ITERATIONS = 10
_SEARCH_DIMENSIONS = 64
_PCA_TRAINING_FACES = 20_000
_CANDIDATES_PER_NEIGHBOUR = 2
_RESCORE_CHUNK = 4_096  # rows re-scored at once: a (chunk, 2k, d) gather
_SCAN_CHUNK = 65_536  # rows of the base compared with every query at once: one BLAS product
# Incremental assignment's estimate (`search_among_reduced`): its dimensions, and how far below the
# threshold a row's estimate may be and still be re-scored (measured: 0.1 missed no neighbour above the
# threshold on LFW-shaped faces among a million, with 121 candidates a query; 0.15 took ten times more).
_ESTIMATE_DIMENSIONS = 128
_ESTIMATE_MARGIN = 0.12


@dataclass(frozen=True, slots=True)
class Neighbours:
    """Row i: the faces nearest to face i (never i itself), best first; -1 and -inf pad short rows."""

    indices: np.ndarray  # (n, k) int64
    similarities: np.ndarray  # (n, k) float32

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, rows: np.ndarray) -> Neighbours:
        """The rows at `rows` (indices or a boolean mask)."""
        return Neighbours(self.indices[rows], self.similarities[rows])


def nearest_neighbours(
    embeddings: np.ndarray, k: int, *, exact_limit: int = 20_000, probes: int = 8, seed: int = 0
) -> Neighbours:
    """The k nearest other faces of every face (approximate above `exact_limit` faces)."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    count = len(embeddings)
    if count <= 1 or k <= 0:
        return _padded(count, k)
    if count <= exact_limit:
        similarities, indices = faiss.knn(
            embeddings, embeddings, min(k + 1, count), faiss.METRIC_INNER_PRODUCT
        )
        return _without_self(np.arange(count), similarities, indices, k)
    reduced = _project(embeddings, seed)
    candidates = _cell_batched(reduced, k * _CANDIDATES_PER_NEIGHBOUR, probes, seed)
    del reduced
    return _rescored(embeddings, candidates.indices, k)


def _project(embeddings: np.ndarray, seed: int) -> np.ndarray:
    """PCA to `_SEARCH_DIMENSIONS`, trained on a sample; distances there approximate the full ones."""
    pca, _ = _sample_pca(embeddings, _SEARCH_DIMENSIONS, seed)
    return pca.apply(embeddings)


def _sample_pca(embeddings: np.ndarray, dimensions: int, seed: int) -> tuple[faiss.PCAMatrix, np.ndarray]:
    """A PCA to `dimensions` (at most), trained on a sample of `_PCA_TRAINING_FACES` rows; and that sample."""
    count, dim = embeddings.shape
    sample = np.random.default_rng(seed).choice(count, min(count, _PCA_TRAINING_FACES), replace=False)
    training = np.ascontiguousarray(embeddings[np.sort(sample)], np.float32)
    pca = faiss.PCAMatrix(dim, min(dimensions, dim, len(training)))
    pca.train(training)
    return pca, training


def _rescored(embeddings: np.ndarray, candidates: np.ndarray, k: int) -> Neighbours:
    """The k candidates most similar by the full embeddings, best first, with exact similarities."""
    count = len(embeddings)
    indices = np.full((count, k), -1, np.int64)
    similarities = np.full((count, k), -np.inf, np.float32)
    for start in range(0, count, _RESCORE_CHUNK):
        rows = slice(start, min(start + _RESCORE_CHUNK, count))
        found = candidates[rows]
        exact = np.einsum("ij,ikj->ik", embeddings[rows], embeddings[np.maximum(found, 0)])
        exact[found < 0] = -np.inf
        best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        indices[rows] = np.take_along_axis(found, best, axis=1)
        similarities[rows] = np.take_along_axis(exact, best, axis=1)
    indices[~np.isfinite(similarities)] = -1
    return Neighbours(indices, similarities)


def search(queries: np.ndarray, base: np.ndarray, k: int) -> Neighbours:
    """Exact k nearest rows of `base` for each query (a brute-force pass; queries are few)."""
    if len(base) == 0 or len(queries) == 0:
        return _padded(len(queries), k)
    similarities, indices = faiss.knn(
        np.ascontiguousarray(queries, np.float32),
        np.ascontiguousarray(base, np.float32),
        min(k, len(base)),
        faiss.METRIC_INNER_PRODUCT,
    )
    return _pad_columns(indices.astype(np.int64), similarities, k)


def _cell_batched(embeddings: np.ndarray, k: int, probes: int, seed: int) -> Neighbours:
    """IVF search of every face, batched per cell: a cell's faces are compared, in one matrix product,
    with every face that probes that cell (a face probes the `probes` cells nearest to it)."""
    count, dim = embeddings.shape
    cells = int(np.clip(np.sqrt(count), 16, 4096))
    rng = np.random.default_rng(seed)
    training = embeddings[rng.choice(count, min(count, cells * _TRAINING_FACES_PER_CELL), replace=False)]
    kmeans = faiss.Kmeans(dim, cells, niter=_KMEANS_ITERATIONS, seed=seed)
    kmeans.train(training)
    del training
    probes = min(probes, cells)
    probed = kmeans.index.search(embeddings, probes)[1]  # (n, probes), nearest cell first
    members_of = _rows_by_value(probed[:, 0], cells)
    probers_of = _rows_by_value(probed.ravel(), cells, divisor=probes)

    best_indices = np.full((count, k + 1), -1, np.int64)
    best_distances = np.full((count, k + 1), np.inf, np.float32)
    for members, probers in zip(members_of, probers_of, strict=True):
        if len(members) == 0 or len(probers) == 0:
            continue
        distances, found = faiss.knn(
            embeddings[probers], embeddings[members], min(k + 1, len(members)), faiss.METRIC_L2
        )
        found = np.where(found >= 0, members[np.maximum(found, 0)], -1)
        distances = np.where(found >= 0, distances, np.inf)
        # Keep each prober's k+1 best over the cells seen so far.
        merged_indices = np.hstack([best_indices[probers], found])
        merged_distances = np.hstack([best_distances[probers], distances])
        keep = np.argpartition(merged_distances, k, axis=1)[:, : k + 1]
        best_indices[probers] = np.take_along_axis(merged_indices, keep, axis=1)
        best_distances[probers] = np.take_along_axis(merged_distances, keep, axis=1)
    order = np.argsort(best_distances, axis=1, kind="stable")
    best_indices = np.take_along_axis(best_indices, order, axis=1)
    best_distances = np.take_along_axis(best_distances, order, axis=1)
    return _without_self(np.arange(count), -best_distances, best_indices, k)


def _rows_by_value(values: np.ndarray, buckets: int, divisor: int = 1) -> list[np.ndarray]:
    """For each bucket b, the positions (divided by `divisor`: row numbers) where `values` is b."""
    order = np.argsort(values, kind="stable")
    bounds = np.searchsorted(values[order], np.arange(buckets + 1))
    rows = order // divisor
    return [rows[bounds[bucket] : bounds[bucket + 1]] for bucket in range(buckets)]


def _without_self(rows: np.ndarray, similarities: np.ndarray, indices: np.ndarray, k: int) -> Neighbours:
    """Drop each row's own index (usually, not always, first: duplicates tie) and keep k columns."""
    is_self = indices == rows[:, None]
    # Stable sort moves the self column (and padding) to the end while keeping the best-first order.
    order = np.argsort(is_self | (indices < 0), axis=1, kind="stable")
    indices = np.take_along_axis(np.where(is_self, -1, indices), order, axis=1)
    similarities = np.take_along_axis(np.where(is_self, -np.inf, similarities), order, axis=1)
    return _pad_columns(indices[:, :k].astype(np.int64), similarities[:, :k], k)


def _pad_columns(indices: np.ndarray, similarities: np.ndarray, k: int) -> Neighbours:
    missing = k - indices.shape[1]
    similarities = np.where(indices >= 0, similarities, -np.inf).astype(np.float32)
    if missing > 0:
        indices = np.pad(indices, ((0, 0), (0, missing)), constant_values=-1)
        similarities = np.pad(similarities, ((0, 0), (0, missing)), constant_values=-np.inf)
    return Neighbours(indices, similarities)


def _padded(count: int, k: int) -> Neighbours:
    return Neighbours(np.full((count, k), -1, np.int64), np.full((count, k), -np.inf, np.float32))


def search_among(
    embeddings: np.ndarray, queries: np.ndarray, among: Sequence[np.ndarray], ks: Sequence[int]
) -> list[Neighbours]:
    """For each mask of `among` (boolean, over the rows of `embeddings`) and its k of `ks`: the exact k
    nearest rows where the mask is true, of each query row (`queries`: row numbers), as row numbers of
    `embeddings`, best first.

    For a few hundred queries among a million faces: the rows are compared in blocks as they lie, one
    matrix product a block for every mask (no copy of the rows searched, as indexing them would make), and
    a block's similarities are kept only where they beat a query's k-th best so far. The same neighbours
    as `search(embeddings[queries], embeddings[mask], k)` mapped back to rows, several times faster
    (FAISS' brute force compares a few hundred queries with the base block by small block).
    """
    queries = np.asarray(queries, np.int64)
    found = [_Best(len(queries), k) for k in ks]
    if len(queries) == 0:
        return [best.neighbours() for best in found]
    vectors = np.ascontiguousarray(embeddings[queries], np.float32)
    for start in range(0, len(embeddings), _SCAN_CHUNK):
        stop = min(start + _SCAN_CHUNK, len(embeddings))
        wanted = [mask[start:stop] for mask in among]
        if not any(mask.any() for mask in wanted):
            continue
        similarities = vectors @ embeddings[start:stop].T  # (queries, block)
        for best, mask in zip(found, wanted, strict=True):
            if best.k > 0 and mask.any():
                best.add(similarities, mask, start)
    return [best.neighbours() for best in found]


def search_among_reduced(
    embeddings: np.ndarray,
    reduced: np.ndarray,
    queries: np.ndarray,
    among: Sequence[np.ndarray],
    ks: Sequence[int],
    floor: float,
) -> list[Neighbours]:
    """`search_among` for the neighbours that matter, at least `floor` alike, in a fraction of the time:
    every row is weighed by its estimated similarity in `reduced` (`SearchProjection.apply` of every row;
    a quarter of the multiply-adds of the full embeddings), those estimated at least `floor` less
    `_ESTIMATE_MARGIN` are re-scored with the full embeddings, and each query's k best of them are
    returned, with exact similarities, best first (rows below the cut are left out, so a row may hold
    fewer than k).

    The estimate drops the part of the similarity outside the projection, which for faces alike is
    positive (a person's faces share it): it errs low, up to 0.24 on LFW-shaped faces among a million,
    so the margin keeps every neighbour above `floor` (see the tests and the README's bench figures)."""
    queries = np.asarray(queries, np.int64)
    # A row is [P(y - mean), mean.y - |mean|^2 / 2, 1]; as a query, its last two columns swap, so that
    # the product is P(x - mean).P(y - mean) + mean.x + mean.y - |mean|^2: x.y without the residuals.
    vectors = np.ascontiguousarray(reduced[queries][:, [*range(reduced.shape[1] - 2), -1, -2]])
    cut = floor - _ESTIMATE_MARGIN
    pairs: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in among]
    for start in range(0, len(reduced), _SCAN_CHUNK):
        stop = min(start + _SCAN_CHUNK, len(reduced))
        # Flat positions, then divided: several times faster than np.nonzero of the 2-D mask.
        query_of, column = np.divmod(np.flatnonzero(vectors @ reduced[start:stop].T >= cut), stop - start)
        for found, mask in zip(pairs, among, strict=True):
            kept = mask[start:stop][column]
            found.append((query_of[kept], column[kept] + start))
    result = []
    for found, k in zip(pairs, ks, strict=True):
        query_of = np.concatenate([query for query, _ in found])
        rows = np.concatenate([row for _, row in found])
        exact = np.empty(len(rows), np.float32)
        for part in range(0, len(rows), _RESCORE_CHUNK):
            chunk = slice(part, part + _RESCORE_CHUNK)
            exact[chunk] = np.einsum(
                "ij,ij->i", embeddings[queries[query_of[chunk]]], embeddings[rows[chunk]]
            )
        result.append(_best_pairs(len(queries), k, query_of, rows, exact))
    return result


def _best_pairs(
    count: int, k: int, query_of: np.ndarray, rows: np.ndarray, similarities: np.ndarray
) -> Neighbours:
    """Each query's k best (query, row, similarity) triples: best first, then the lower row (a stable order
    for equal similarities)."""
    order = np.lexsort((rows, -similarities, query_of))
    query_of, rows, similarities = query_of[order], rows[order], similarities[order]
    rank = np.arange(len(order)) - np.searchsorted(query_of, np.arange(count))[query_of]
    kept = rank < k
    found = _padded(count, k)
    found.indices[query_of[kept], rank[kept]] = rows[kept]
    found.similarities[query_of[kept], rank[kept]] = similarities[kept]
    return found


class SearchProjection:
    """The PCA of a pack's embeddings to `_ESTIMATE_DIMENSIONS`, trained on a sample; `apply` gives each
    row as `search_among_reduced` weighs it."""

    def __init__(self, embeddings: np.ndarray, seed: int = 0) -> None:
        self._pca, training = _sample_pca(embeddings, _ESTIMATE_DIMENSIONS, seed)
        self.dimensions = int(self._pca.d_out)
        self._mean = training.mean(axis=0)

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        reduced = np.empty((len(embeddings), self.dimensions + 2), np.float32)
        offset = float(self._mean @ self._mean) / 2
        for start in range(0, len(embeddings), _SCAN_CHUNK):
            rows = slice(start, min(start + _SCAN_CHUNK, len(embeddings)))
            block = np.ascontiguousarray(embeddings[rows], np.float32)
            reduced[rows, :-2] = self._pca.apply(block)
            reduced[rows, -2] = block @ self._mean - offset
            reduced[rows, -1] = 1
        return reduced


class _Best:
    """Each query's k most similar rows so far."""

    def __init__(self, count: int, k: int) -> None:
        self.count, self.k = count, k
        self.rows = np.full((count, k), -1, np.int64)
        self.similarities = np.full((count, k), -np.inf, np.float32)

    def neighbours(self) -> Neighbours:
        return Neighbours(self.rows, self.similarities)

    def add(self, similarities: np.ndarray, wanted: np.ndarray, start: int) -> None:
        """Merge a block's similarities (columns: rows `start`...; only the `wanted` ones count)."""
        count, k = self.count, self.k
        threshold = self.similarities[:, -1]
        hits = (similarities > threshold[:, None]) & wanted[None, :]
        if np.count_nonzero(hits) > 4 * k * count:  # the first blocks: each query's k best of the block
            masked = np.where(wanted[None, :], similarities, -np.inf)
            width = min(k, masked.shape[1])
            top = np.argpartition(-masked, width - 1, axis=1)[:, :width]
            query_of, column = np.repeat(np.arange(count), width), top.ravel()
            beats = masked[query_of, column] > threshold[query_of]
            query_of, column = query_of[beats], column[beats]
        else:
            query_of, column = np.nonzero(hits)
        if len(query_of) == 0:
            return
        # Each query's k best of what it had and what this block adds.
        held = np.isfinite(self.similarities)
        best = _best_pairs(
            count,
            k,
            np.concatenate([np.nonzero(held)[0], query_of]),
            np.concatenate([self.rows[held], column + start]),
            np.concatenate([self.similarities[held], similarities[query_of, column]]),
        )
        self.rows, self.similarities = best.indices, best.similarities
