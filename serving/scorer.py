"""The online scorer: the global block only, against item-tower outputs precomputed once
for the whole catalog.

    score(u, i, ctx) = model.global_block(e_u, item_tower(i), ctx)

with e_u the stored meta embedding: the exactness contract of the core model, so the
served score equals the full model's logit with u's adapted meta block. A request's
scores come from `serving.served_model.ServedModel`, the global block's weights exported once
to NumPy (PyTorch's fixed cost per operation was half the time of scoring one user
against 100 items); the catalog, zero-step embeddings and context terms are computed in
PyTorch under `torch.inference_mode`. The scorer also owns the zero-step embeddings (cold
users with a features row, and the all-missing default) and the retrieval head's item
vectors for FAISS. Nothing here runs MAML.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from meta_embed import storage
from meta_embed.checkpoint import Checkpoint
from meta_embed.features import Column, default_row, encode, encode_with_default
from meta_embed.inference import catalog_vectors, user_inputs, zero_step
from meta_embed.model import ItemSide
from meta_embed.tables import ITEMS, USERS, check_schema
from serving.ids import IdIndex
from serving.served_model import convert

ContextValue = str | int | float | list[str] | None
DICT_MAX_ITEMS = 1 << 21  # catalogs up to this size also keep a dict id -> row (about 100 bytes per item)


class ContextError(ValueError):
    """A request's context does not fit the model's context columns."""


def read_features(path: Path | str, kind: str) -> pa.Table:
    """Read the items or users table (a Parquet file or directory, or one file on an object
    store) and check its schema."""
    table = pq.read_table(pa.BufferReader(storage.read_bytes(path)) if storage.is_remote(path) else path)
    check_schema(table.schema, ITEMS if kind == "items" else USERS, str(path))
    return table


@dataclasses.dataclass(frozen=True)
class Catalog:
    """Every item's tower output, its first-layer terms and retrieval vector, computed once
    per model version.

    A request's item ids are looked up in a plain dict when the catalog is small enough
    (a few microseconds for 100 ids), else through the hashed `IdIndex`.
    """

    ids: IdIndex
    side: (
        ItemSide  # item-tower outputs `side.v` (items, item_dim), the global block's item terms (no context)
    )
    retrieval: np.ndarray  # (items, R) float32: model.retrieval.item(vectors)
    fingerprint: str  # hash of ids and vectors: keys the FAISS item index
    rows_by_id: dict[str, int] | None  # id -> row for catalogs up to DICT_MAX_ITEMS

    def rows(self, item_ids: list[str]) -> np.ndarray:
        """Row of each id (int64), -1 where unknown."""
        if self.rows_by_id is None:
            return self.ids.find_many(item_ids)
        return np.fromiter(map(self.rows_by_id.get, item_ids, itertools.repeat(-1)), np.int64, len(item_ids))


def build_catalog(ckpt: Checkpoint, items: pa.Table) -> Catalog:
    model, spec = ckpt.model, ckpt.spec
    ids = IdIndex.build(items.column(spec.item_key), what="items table item_id")
    vectors = catalog_vectors(model, encode(items, spec.item, "items table"))  # (items, item_dim)
    with torch.inference_mode():
        retrieval = model.retrieval.item(vectors)  # (items, R)
        side = model.global_block.item_side(vectors)
    h = hashlib.sha256(ckpt.model_version.encode())
    h.update(np.ascontiguousarray(ids.hashes).tobytes())
    h.update(np.ascontiguousarray(ids.order).tobytes())
    h.update(vectors.numpy().tobytes())
    rows_by_id = {i: r for r, i in enumerate(ids.ids.to_pylist())} if len(ids) <= DICT_MAX_ITEMS else None
    return Catalog(
        ids, side, np.ascontiguousarray(retrieval.numpy(), dtype=np.float32), h.hexdigest()[:16], rows_by_id
    )


class Scorer:
    """Global-block scoring, retrieval queries and zero-step embeddings for one checkpoint."""

    def __init__(self, ckpt: Checkpoint, items: pa.Table, users: pa.Table | None = None):
        self.checkpoint = ckpt
        self.model = ckpt.model.eval()
        self.spec = ckpt.spec
        self.model_version = ckpt.model_version
        self.dim = ckpt.model_cfg.embedding_dim
        self.catalog = build_catalog(ckpt, items)
        self.item_count = items.num_rows
        self.users = (
            None if users is None else IdIndex.build(users.column(self.spec.user_key), "users table user_id")
        )
        # every user's features, then the all-missing row (row len(users)): users without a features row
        self.user_features = (
            encode_with_default(users, self.spec.user, "users table")
            if users is not None
            else default_row(self.spec.user)
        )
        self.default_embedding = self._zero_step(self.user_count)  # (D,)
        with torch.inference_mode():
            self.no_context = self._encode_context({})  # what a request without context scores with
            self.no_context_term = self._context_term({})
            self.served = convert(self.model.global_block, self.catalog.side)  # the hot path, in NumPy

    @property
    def user_count(self) -> int:
        return 0 if self.users is None else len(self.users)

    def item_rows(self, item_ids: list[str]) -> np.ndarray:
        """Catalog row of each id (int64), -1 where the item is unknown."""
        return self.catalog.rows(item_ids)

    def item_ids(self, rows: np.ndarray) -> list[str]:
        return self.catalog.ids.ids.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()

    def cold_embedding(self, user_id: str) -> np.ndarray | None:
        """Zero-step embedding from the users table (the meta block's initialization), or None."""
        row = -1 if self.users is None else self.users.find(user_id)
        return None if row < 0 else self._zero_step(row)

    def _zero_step(self, row: int) -> np.ndarray:
        with torch.inference_mode():
            return zero_step(self.model, user_inputs(self.model, self.user_features, torch.tensor([row])))[0]

    def scores(
        self, e: np.ndarray, rows: np.ndarray, context: Mapping[str, ContextValue] | None = None
    ) -> np.ndarray:
        """Logits (n,) of embedding e (D,) against catalog rows (n,)."""
        extra = self._context_term(context) if context else self.no_context_term
        return self.served(np.asarray(e, dtype=np.float32), np.asarray(rows, dtype=np.int64), extra)

    def query(self, e: np.ndarray) -> np.ndarray:
        """The retrieval head's query vector (R,) for embedding e (D,)."""
        with torch.inference_mode():
            return self.model.retrieval.query(torch.tensor(e, dtype=torch.float32)).numpy()

    def context_vector(self, context: Mapping[str, ContextValue] | None) -> torch.Tensor | None:
        """Encode one request's context (column -> value) into (1, C); missing columns are missing values."""
        return self._encode_context(context) if context else self.no_context

    def _context_term(self, context: Mapping[str, ContextValue]) -> np.ndarray | None:
        """The global block's first-layer term (hidden,) of one request's context."""
        ctx = self.context_vector(context)
        if ctx is None or ctx.shape[-1] == 0:
            return None
        with torch.inference_mode():
            return self.model.global_block.context_term(ctx)[0].numpy()

    def _encode_context(self, context: Mapping[str, ContextValue]) -> torch.Tensor | None:
        columns = self.spec.context
        unknown = sorted(set(context) - {c.name for c in columns})
        if unknown:
            known = [c.name for c in columns]
            raise ContextError(
                f"context has unknown keys {unknown}; this model's context columns are {known}"
            )
        if not columns:
            return None
        table = pa.table({c.name: _context_array(c, context.get(c.name)) for c in columns})
        return self.model.context_vectors(encode(table, columns, "request context"))


def _context_array(col: Column, value: Any) -> pa.Array:
    try:
        if col.kind == "bag":
            if value is not None and not isinstance(value, list):
                raise TypeError("expected a list of strings")
            return pa.array([None if value is None else [str(v) for v in value]], pa.list_(pa.string()))
        if col.kind == "bucket":
            if isinstance(value, (list, bool)) or (isinstance(value, str) and not value.strip()):
                raise TypeError("expected a number")
            number = None if value is None else float(value)
            if number is not None and not np.isfinite(number):
                raise TypeError("expected a finite number")
            return pa.array([number], pa.float64())
        if isinstance(value, list):
            raise TypeError("expected a single value")
        return pa.array([None if value is None else str(value)], pa.string())
    except (TypeError, ValueError) as err:
        raise ContextError(f"context['{col.name}'] ({col.kind}): {err}; got {value!r}") from err
