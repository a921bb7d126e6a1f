"""What the HTTP API does, as plain functions of one `ServingState`.

Each function takes the state it was handed at the start of a request and never
looks at another one, so a hot reload cannot mix two snapshots or two models inside
one answer. The in-process benchmark calls these directly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence

import numpy as np

from serving.scorer import ContextValue
from serving.state import ServingState, user_vectors
from serving.store import Status


class UnknownItems(LookupError):
    """Some requested item ids are not in the catalog."""

    def __init__(self, item_ids: list[str]):
        self.item_ids = item_ids
        shown = item_ids[:20]
        more = f" (and {len(item_ids) - 20} more)" if len(item_ids) > 20 else ""
        super().__init__(f"unknown item_ids {shown}{more}: not in the item catalog")


@dataclasses.dataclass(frozen=True)
class UserEmbedding:
    user_id: str
    embedding: np.ndarray  # (D,) float32
    status: Status
    row: int  # row in the snapshot, -1 if not in it
    n_support: int | None = None
    last_event_ts: dt.datetime | None = None


def user_embedding(state: ServingState, user_id: str, now: dt.datetime | None = None) -> UserEmbedding:
    """The user's embedding and where it came from: fresh/stale snapshot, cold features, or default."""
    store = state.store
    row = store.row(user_id)
    if row >= 0:
        status = store.known_status(now or dt.datetime.now(dt.UTC), state.max_age_s)
        return UserEmbedding(
            user_id, store.embedding(row), status, row, int(store.n_support[row]), store.last_event(row)
        )
    cold = state.scorer.cold_embedding(user_id)
    if cold is not None:
        return UserEmbedding(user_id, cold, Status.COLD, -1)
    return UserEmbedding(user_id, state.scorer.default_embedding, Status.DEFAULT, -1)


def score(
    state: ServingState,
    user_id: str,
    item_ids: Sequence[str],
    context: Mapping[str, ContextValue] | None = None,
) -> tuple[UserEmbedding, np.ndarray]:
    """Logits (n,) of the user against the given items, in request order."""
    rows = state.scorer.item_rows(list(item_ids))
    if (rows < 0).any():
        raise UnknownItems([item_ids[i] for i in np.flatnonzero(rows < 0)])
    user = user_embedding(state, user_id)
    return user, state.scorer.scores(user.embedding, rows, context)


@dataclasses.dataclass(frozen=True)
class Recommendation:
    item_ids: list[str]
    scores: np.ndarray  # (k,) global-block logits, descending
    retrieval_scores: np.ndarray  # (k,) retrieval-head inner products


def recommend(
    state: ServingState,
    user_id: str,
    k: int,
    exclude_item_ids: Sequence[str] = (),
    context: Mapping[str, ContextValue] | None = None,
    exclude_seen: bool = True,
) -> tuple[UserEmbedding, Recommendation]:
    """Top-k items: FAISS candidates by the retrieval head, reranked by the global block.

    Left out: `exclude_item_ids` (unknown ids are ignored: there is nothing to exclude) and,
    with `exclude_seen`, the items the snapshot lists as the user's recent ones.
    """
    user = user_embedding(state, user_id)
    excluded = state.scorer.item_rows(list(exclude_item_ids)) if exclude_item_ids else np.zeros(0, np.int64)
    excluded = excluded[excluded >= 0]
    if exclude_seen and user.row >= 0:
        excluded = np.concatenate([excluded, state.store.seen(user.row)])
    depth = max(k, state.rerank_depth) + len(excluded)
    retrieval, rows = state.items_index.search(state.scorer.query(user.embedding), depth)
    retrieval, rows = retrieval[0], rows[0]
    keep = (rows >= 0) & ~np.isin(rows, excluded)
    retrieval, rows = retrieval[keep], rows[keep]
    if len(rows) == 0:
        state.scorer.context_vector(context)  # refuse a bad context even when nothing is left to score
        return user, Recommendation([], np.zeros(0, np.float32), np.zeros(0, np.float32))
    logits = state.scorer.scores(user.embedding, rows, context)
    top = np.argsort(-logits, kind="stable")[:k]
    return user, Recommendation(state.scorer.item_ids(rows[top]), logits[top], retrieval[top])


def similar(state: ServingState, user_id: str, k: int) -> tuple[UserEmbedding, list[str], np.ndarray]:
    """The k users of the snapshot whose embeddings are closest in cosine similarity (self excluded)."""
    user = user_embedding(state, user_id)
    sims, rows = state.users_index.search(user_vectors(user.embedding), k + 1)
    sims, rows = sims[0], rows[0]
    keep = (rows >= 0) & (rows != user.row)
    sims, rows = sims[keep][:k], rows[keep][:k]
    ids = state.store.ids.ids.take(rows.astype(np.int64)).to_pylist()
    return user, ids, sims
