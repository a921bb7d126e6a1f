"""FAISS indexes for serving: the item index (retrieval) and the user index (lookalikes).

Both use the inner-product metric. The index type is picked by size through an
`index_factory` string: exact `Flat` below `IndexConfig.exact_below` vectors, else
`IVF{nlist},Flat` (a trained coarse quantizer) or `HNSW{M},Flat`. Vectors are added in
row order, so a FAISS label is the row in the catalog (items) or in the snapshot
(users); the id arrays of the catalog and the store map rows back to ids.

Each index directory carries `meta.json` (model_version, snapshot name, the item
catalog's fingerprint, factory strings); `read_meta` refuses a directory built for
another model or snapshot. Approximate search is tested against exact search
(`recall_at_k`); the search budget is `nprobe` (IVF) or `efSearch` (HNSW).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from serving.serving_config import ApproxKind, IndexConfig

META_JSON = "meta.json"


class IndexVersionError(ValueError):
    """An index directory was built for another model_version, snapshot or catalog."""


def factory_string(n: int, cfg: IndexConfig, approx: ApproxKind = "ivf") -> str:
    """The `index_factory` string for n vectors: Flat, IVF{nlist},Flat or HNSW{M},Flat."""
    if n < cfg.exact_below:
        return "Flat"
    if approx == "hnsw":
        return f"HNSW{cfg.hnsw_m},Flat"
    nlist = cfg.nlist or 2 ** round(math.log2(math.sqrt(n)))
    return f"IVF{max(1, min(nlist, n // 39))},Flat"


def search_params(factory: str, budget: int | None) -> faiss.SearchParameters | None:
    """Per-call search parameters (thread-safe; the index itself is never mutated)."""
    if budget is None:
        return None
    if factory.startswith("IVF"):
        params = faiss.SearchParametersIVF()
        params.nprobe = int(budget)
        return params
    if factory.startswith("HNSW"):
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(budget)
        return params
    return None


@dataclasses.dataclass(frozen=True)
class VectorIndex:
    """A FAISS index over row-ordered vectors, with its factory string and default budget."""

    index: faiss.Index
    factory: str
    budget: int | None  # nprobe (IVF) or efSearch (HNSW); None for Flat

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, budget: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) of queries (q, d); rows are -1 where fewer than k were found."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        params = search_params(self.factory, budget if budget is not None else self.budget)
        scores, rows = self.index.search(q, k, params=params)
        return scores, rows


def default_budget(factory: str, cfg: IndexConfig) -> int | None:
    if factory.startswith("IVF"):
        return cfg.nprobe
    if factory.startswith("HNSW"):
        return cfg.ef_search
    return None


def build_index(
    vectors: np.ndarray, cfg: IndexConfig, approx: ApproxKind = "ivf", factory: str | None = None
) -> VectorIndex:
    """Build an inner-product index over vectors (n, d) (`factory` overrides the choice by size);
    IVF trains its quantizer on a seeded sample."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    factory = factory or factory_string(n, cfg, approx)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if factory.startswith("HNSW"):
        faiss.downcast_index(index).hnsw.efConstruction = cfg.ef_construction
    if not index.is_trained:
        nlist = faiss.extract_index_ivf(index).nlist
        size = min(n, max(cfg.train_size, 39 * nlist))
        sample = x if size == n else x[np.random.default_rng(cfg.seed).choice(n, size, replace=False)]
        index.train(sample)
    if n:
        index.add(x)
    return VectorIndex(index, factory, default_budget(factory, cfg))


def save_index(vi: VectorIndex, path: Path) -> None:
    faiss.write_index(vi.index, str(path))


def load_index(path: Path, factory: str, cfg: IndexConfig) -> VectorIndex:
    return VectorIndex(faiss.read_index(str(path)), factory, default_budget(factory, cfg))


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    (directory / META_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_meta(directory: Path, model_version: str, snapshot: str, items_fingerprint: str) -> dict[str, Any]:
    """The index directory's meta.json, refused unless it matches what the server holds."""
    path = directory / META_JSON
    if not path.is_file():
        raise IndexVersionError(f"{path}: missing; rebuild with `meta-embed index build`")
    meta = json.loads(path.read_text())
    expected = {"model_version": model_version, "snapshot": snapshot, "items_fingerprint": items_fingerprint}
    wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k} is {got!r}, expected {want!r}" for k, (got, want) in wrong.items())
        raise IndexVersionError(f"{path}: built for another model or snapshot ({detail}); rebuild it")
    return meta


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows (q, k) of the exact top-k by inner product (a flat index)."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k that the approximate search returned."""
    k = exact.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(e.tolist()) - {-1}) for f, e in zip(found, exact))
    return hits / float(exact.size)
