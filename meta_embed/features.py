"""Feature spec and the vectorized Arrow -> tensor encoding.

A `FeatureSpec` names the columns that feed each part of the model: the user side
(the meta block), the item tower and the per-event context. Each column is one of:

- `vocab`:  a small categorical; index 0 is out-of-vocabulary or missing.
- `hash`:   a high-cardinality id, hashed with blake2b into `buckets` (0 = missing).
- `bag`:    a multi-valued list<string> column over a vocabulary, mean-pooled by the model.
- `bucket`: a number cut at `boundaries` (0 = missing, 1.. = the interval).

Encoding works on whole Arrow columns: values are dictionary-encoded, each distinct
value is mapped once, and rows are gathered with NumPy (no Python loop per row).
The spec serializes to JSON and has a content hash that checkpoints and snapshots carry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

Kind = Literal["vocab", "hash", "bag", "bucket"]
Encoded = dict[str, torch.Tensor]
"""Column name -> int64 tensor: (rows,) for scalar kinds, (rows, max_len) for bags (0 = padding)."""


@dataclasses.dataclass(frozen=True)
class Column:
    """One input column and how it is turned into embedding indices."""

    name: str
    kind: Kind
    dim: int = 8
    buckets: int = 0
    vocab: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocab", tuple(self.vocab))
        object.__setattr__(self, "boundaries", tuple(float(b) for b in self.boundaries))
        if self.kind not in ("vocab", "hash", "bag", "bucket"):
            raise ValueError(f"Column {self.name!r}: kind must be vocab|hash|bag|bucket, got {self.kind!r}")
        if self.dim <= 0:
            raise ValueError(f"Column {self.name!r}: dim must be > 0, got {self.dim}")
        if self.kind == "hash" and self.buckets < 2:
            raise ValueError(f"Column {self.name!r}: a hash column needs buckets >= 2, got {self.buckets}")
        if self.kind == "bucket" and list(self.boundaries) != sorted(self.boundaries):
            raise ValueError(f"Column {self.name!r}: boundaries must be sorted, got {self.boundaries}")

    @property
    def cardinality(self) -> int:
        """Rows of this column's embedding table (index 0 included)."""
        if self.kind == "hash":
            return self.buckets
        if self.kind == "bucket":
            return len(self.boundaries) + 2
        return len(self.vocab) + 1


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Which columns feed the meta block (`user`), the item tower (`item`) and the context."""

    user: tuple[Column, ...]
    item: tuple[Column, ...]
    context: tuple[Column, ...] = ()
    user_key: str = "user_id"
    item_key: str = "item_id"

    def __post_init__(self) -> None:
        for group in ("user", "item", "context"):
            object.__setattr__(self, group, tuple(getattr(self, group)))
        if not self.user or not self.item:
            raise ValueError("FeatureSpec needs at least one user column and one item column")
        names = [c.name for c in self.user + self.item + self.context]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"FeatureSpec: columns listed twice: {dupes}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        """The spec of `to_json`'s text; ValueError naming the group, column and field otherwise."""
        from meta_embed.config import from_dict

        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"FeatureSpec: expected a JSON object, got {type(raw).__name__}")
        groups = {}
        for group in ("user", "item", "context"):
            columns = raw.pop(group, [])
            if not isinstance(columns, list):
                raise ValueError(
                    f"FeatureSpec.{group}: expected a list of columns, got {type(columns).__name__}"
                )
            groups[group] = tuple(_column(group, k, c, from_dict) for k, c in enumerate(columns))
        return from_dict(cls, {**groups, **raw})

    @property
    def hash(self) -> str:
        """Content hash of the spec (vocabularies included): 16 hex digits."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _column(group: str, k: int, raw: Any, from_dict: Any) -> Column:
    try:
        return from_dict(Column, raw)
    except ValueError as err:
        raise ValueError(f"FeatureSpec.{group}[{k}]: {err}") from None


def movielens_template() -> FeatureSpec:
    """The default spec for MovieLens-shaped tables; vocabularies are filled by `fit_spec`."""
    return FeatureSpec(
        user=(
            Column("age", "bucket", dim=4, boundaries=(18, 25, 35, 45, 50, 56)),
            Column("gender", "vocab", dim=2),
            Column("occupation", "vocab", dim=6),
            Column("zip_prefix", "hash", dim=6, buckets=1024),
        ),
        item=(
            Column("item_id", "hash", dim=16, buckets=1 << 16),
            Column("genres", "bag", dim=8),
            Column("year", "bucket", dim=4, boundaries=tuple(range(1930, 2011, 5))),
        ),
    )


def fit_spec(
    template: FeatureSpec, users: pa.Table, items: pa.Table, events: pa.Table | None = None
) -> FeatureSpec:
    """Fill the vocabularies of `vocab` and `bag` columns from the data (sorted, so stable)."""

    def fit(columns: tuple[Column, ...], table: pa.Table | None) -> tuple[Column, ...]:
        out = []
        for col in columns:
            if col.kind in ("vocab", "bag") and not col.vocab:
                if table is None or col.name not in table.column_names:
                    raise ValueError(f"fit_spec: column '{col.name}' is not in the table it is read from")
                values = table.column(col.name)
                if col.kind == "bag":
                    values = pc.list_flatten(values)
                uniq = pc.unique(values.drop_null()).to_pylist()
                col = dataclasses.replace(col, vocab=tuple(sorted(str(v) for v in uniq)))
            out.append(col)
        return tuple(out)

    return dataclasses.replace(
        template,
        user=fit(template.user, users),
        item=fit(template.item, items),
        context=fit(template.context, events),
    )


def with_user_ids(spec: FeatureSpec, user_ids: list[str], dim: int) -> FeatureSpec:
    """`spec` with the user id among the user columns: a vocabulary of `user_ids` (the users
    with training events); any other id, a new user, encodes to the out-of-vocabulary row 0."""
    column = Column(spec.user_key, "vocab", dim=dim, vocab=tuple(sorted(set(user_ids))))
    return dataclasses.replace(spec, user=spec.user + (column,))


def stable_hash(values: list[str], buckets: int) -> np.ndarray:
    """blake2b of each string into 1..buckets-1 (0 is reserved for missing)."""
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        digest = hashlib.blake2b(v.encode(), digest_size=8).digest()
        out[i] = 1 + int.from_bytes(digest, "little") % (buckets - 1)
    return out


def _map_distinct(array: pa.Array, col: Column) -> np.ndarray:
    """Index of every value of a string-like array; maps each distinct value once."""
    if len(array) == 0:
        return np.zeros(0, dtype=np.int64)
    encoded = pc.dictionary_encode(array.cast(pa.string()))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    distinct = encoded.dictionary.to_pylist()
    if col.kind == "hash":
        table = stable_hash(distinct, col.buckets)
    else:
        lookup = {v: i + 1 for i, v in enumerate(col.vocab)}
        table = np.array([lookup.get(v, 0) for v in distinct], dtype=np.int64)
    table = np.concatenate([[0], table])  # slot 0 = null
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    return table[codes]


def _encode_bag(array: pa.Array, col: Column) -> np.ndarray:
    """(rows, max_len) vocabulary indices of a list<string> column, 0-padded."""
    n = len(array)
    flat = pc.list_flatten(array)
    parents = pc.list_parent_indices(array).to_numpy().astype(np.int64)
    idx = _map_distinct(flat, col)
    counts = np.bincount(parents, minlength=n) if len(parents) else np.zeros(n, dtype=np.int64)
    width = max(int(counts.max()) if n else 0, 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(parents)) - starts[parents]
    out = np.zeros((n, width), dtype=np.int64)
    out[parents, pos] = idx
    return out


def encode_column(array: pa.Array | pa.ChunkedArray, col: Column) -> torch.Tensor:
    """Encode one Arrow column into embedding indices (see `Encoded`)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if col.kind == "bag":
        return torch.from_numpy(_encode_bag(array, col))
    if col.kind == "bucket":
        values = array.cast(pa.float64()).to_numpy(zero_copy_only=False)
        idx = np.searchsorted(np.asarray(col.boundaries), values, side="right") + 1
        idx[np.isnan(values)] = 0
        return torch.from_numpy(idx.astype(np.int64))
    return torch.from_numpy(_map_distinct(array, col))


def encode(table: pa.Table, columns: tuple[Column, ...], source: str = "table") -> Encoded:
    """Encode the `columns` of `table`; a missing column fails naming `source`."""
    out: Encoded = {}
    for col in columns:
        if col.name not in table.column_names:
            raise ValueError(
                f"{source}: feature column '{col.name}' ({col.kind}) is missing; "
                f"found {table.column_names}. Fix the input or the feature spec."
            )
        out[col.name] = encode_column(table.column(col.name), col)
    return out


def default_row(columns: tuple[Column, ...]) -> Encoded:
    """Encoded features of one row with every value missing (for entities without a features row)."""
    return {c.name: torch.zeros((1, 1) if c.kind == "bag" else (1,), dtype=torch.long) for c in columns}


def encode_with_default(table: pa.Table, columns: tuple[Column, ...], source: str = "table") -> Encoded:
    """`encode` of every row of `table`, then one all-missing row: the row that ids
    without a features row are given (its index is `table.num_rows`)."""
    return concat([encode(table, columns, source), default_row(columns)])


def take(encoded: Encoded, rows: torch.Tensor) -> Encoded:
    """Gather rows (any index shape) of every encoded column."""
    return {name: t[rows] for name, t in encoded.items()}


def to_device(encoded: Encoded, device: torch.device) -> Encoded:
    """Every encoded column on `device` (the same tensors where they already are)."""
    return {name: t.to(device) for name, t in encoded.items()}


def concat(parts: list[Encoded]) -> Encoded:
    """Stack encoded row blocks; bags are right-padded to the widest block."""
    out: Encoded = {}
    for name in parts[0]:
        tensors = [p[name] for p in parts]
        if tensors[0].dim() == 2:
            width = max(t.shape[1] for t in tensors)
            tensors = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors]
        out[name] = torch.cat(tensors)
    return out
