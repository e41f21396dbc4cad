"""Region graph for quality-guided unwrapping: phase-band regions and their 2π offsets by a maximum spanning forest.

Used by :func:`qsmbids.qsm.unwrap.unwrap_quality`. Voxels whose wrapped phase lies in the same band of
[−π, π) and that touch each other carry no wrap between them, so each such region has one integer 2π offset;
the offsets between regions follow the heaviest (most reliable) edges of a spanning forest of the region
adjacency graph, integrated by pointer jumping (no per-voxel Python loop).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree

__all__ = ["band_regions", "boundary_edges", "region_offsets"]

TWO_PI = 2.0 * math.pi


def band_regions(x: np.ndarray, valid: np.ndarray, n_bands: int) -> tuple[np.ndarray, int]:
    """Label 6-connected regions of valid voxels whose phase (in [−π, π]) lies in the same 2π/n_bands band.

    Returns int32 labels 0..n−1 and −1 outside ``valid``.
    """
    band = ((x + math.pi) * (n_bands / TWO_PI)).astype(np.uint8)
    np.minimum(band, n_bands - 1, out=band)
    band = np.where(valid, band, np.uint8(n_bands))
    lab = np.zeros(x.shape, dtype=np.int32)
    counts = []
    for b in range(n_bands):
        lb, n = ndimage.label(band == b, output=np.int32)
        lab += lb
        counts.append(int(n))
    base = np.concatenate([[0], np.cumsum(counts)[:-1], [0]]).astype(np.int32) - 1
    lab += base[band]
    return lab, int(sum(counts))


def boundary_edges(lab: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Per stride of the flattened array: flat indices u of pairs (u, u + stride) of valid voxels in different regions.

    ``lab`` must end with an invalid (−1) layer along every axis, so that pairs wrapping around a row of the
    flattened array always touch an invalid voxel and drop out.
    """
    flat = lab.ravel()
    out = []
    for st in (lab.shape[1] * lab.shape[2], lab.shape[2], 1):
        a, b = flat[:-st], flat[st:]
        out.append((st, np.flatnonzero((a != b) & ((a | b) >= 0))))
    return out


def region_offsets(n_regions: int, ru: np.ndarray, rv: np.ndarray, w: np.ndarray,
                    step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer 2π offset K of each region and its connected component, from the maximum spanning forest.

    Edge e joins regions ru → rv with weight w and K[rv] − K[ru] = step. Parallel edges between two regions are
    reduced to the heaviest; scipy's spanning tree on costs 2 − w; one breadth-first search from a virtual
    root joined to the first region of every component orients the forest; offsets are summed to the roots
    by pointer jumping.
    """
    ids = np.arange(n_regions, dtype=np.int64)
    if ru.size == 0:
        return np.zeros(n_regions, dtype=np.int64), ids
    lo, hi = np.minimum(ru, rv).astype(np.int64), np.maximum(ru, rv).astype(np.int64)
    st = np.where(ru == lo, step, -step)  # K[hi] − K[lo]
    pair = lo * n_regions + hi
    if n_regions < 2**21:
        q = np.rint((1.0 - w) * (2**20 - 1)).astype(np.int64)
        order = np.argsort((pair << 20) | q)
    else:
        order = np.lexsort((-w, pair))
    pair = pair[order]
    first = np.ones(pair.size, dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    sel = order[first]
    pair, lo, hi, w, st = pair[first], lo[sel], hi[sel], w[sel], st[sel]
    indptr = np.zeros(n_regions + 1, dtype=np.int64)
    np.cumsum(np.bincount(lo, minlength=n_regions), out=indptr[1:])
    graph = csr_matrix((2.0 - w.astype(np.float64), hi, indptr), shape=(n_regions, n_regions))
    tree = minimum_spanning_tree(graph)
    n_comp, comp = connected_components(tree, directed=False)
    seeds = np.unique(comp, return_index=True)[1]
    t = tree.tocoo()
    rows = np.concatenate([t.row.astype(np.int64), np.full(n_comp, n_regions, dtype=np.int64)])
    cols = np.concatenate([t.col.astype(np.int64), seeds])
    rooted = csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_regions + 1, n_regions + 1))
    _, pred = breadth_first_order(rooted, n_regions, directed=False, return_predecessors=True)
    parent = pred[:n_regions].astype(np.int64)
    root = parent == n_regions
    parent[root] = ids[root]
    child = ids[~root]
    par = parent[child]
    j = np.searchsorted(pair, np.minimum(child, par) * n_regions + np.maximum(child, par))
    offset = np.zeros(n_regions, dtype=np.int64)
    offset[child] = np.where(child > par, st[j], -st[j])  # K[child] − K[parent]
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        offset = offset + offset[parent]
        parent = nxt
    return offset, comp.astype(np.int64)
