"""Request and response bodies of the HTTP API (pydantic), with their limits.

Limits: ids are 1..256 characters; `item_ids` holds 1..1000 ids;
`k` is 1..1000; `exclude_item_ids` at most 10000 ids; unknown fields are refused.
The whole body is capped separately (1 MiB by default, 413).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from serving.serving_config import MAX_ID_LENGTH, MAX_ITEMS_PER_REQUEST, MAX_K

Id = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)
]  # pydantic refuses lone surrogates
ContextValue = str | int | float | list[str] | None
Context = dict[str, ContextValue]
StatusName = Literal["fresh", "stale", "cold", "default"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no coercion: `"k": true` is a 422, not k=1


class ScoreRequest(_Strict):
    user_id: Id
    item_ids: list[Id] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)
    context: Context | None = Field(
        None, description="context feature values by column name (model-specific)"
    )


class RecommendRequest(_Strict):
    user_id: Id
    k: int = Field(10, ge=1, le=MAX_K)
    exclude_item_ids: list[Id] = Field(default_factory=list, max_length=10_000)
    exclude_seen: bool = Field(
        True, description="leave out the items of the user's recent events (as of the snapshot)"
    )
    context: Context | None = None


class Served(BaseModel):
    """What every user answer says about where it came from."""

    user_id: str
    status: StatusName
    model_version: str
    snapshot: str
    as_of: str


class EmbeddingResponse(Served):
    dim: int
    embedding: list[float]
    n_support: int | None = Field(
        None, description="support events the embedding was adapted on (snapshot users)"
    )
    last_event_ts: str | None = None


class ScoreResponse(Served):
    item_ids: list[str]
    scores: list[float] = Field(description="global-block logits (predicted rating for regression models)")


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    retrieval_score: float


class RecommendResponse(Served):
    items: list[RecommendedItem]


class SimilarUser(BaseModel):
    user_id: str
    similarity: float


class SimilarResponse(Served):
    users: list[SimilarUser]


class Health(BaseModel):
    status: Literal["ok"]
    snapshot: str


class Counts(BaseModel):
    users_in_snapshot: int
    items: int
    users_with_features: int


class ReloadInfo(BaseModel):
    checks: int
    swaps: int
    failures: int
    last_error: str | None
    watching: bool
    interval_s: float | None


class InfoResponse(BaseModel):
    model_version: str
    snapshot: str
    as_of: str
    age_s: float
    stale: bool
    max_age_s: float
    embedding_mode: str
    embedding_dim: int
    embedding_dtype: str
    counts: Counts
    indexes: dict[str, str]
    loaded_at: str
    reload: ReloadInfo


class ErrorResponse(BaseModel):
    detail: str


class InvalidField(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class InvalidRequest(BaseModel):
    """A 422: what is wrong with each field, and all of it in one line."""

    detail: list[InvalidField]
    message: str


class UnknownItemsResponse(BaseModel):
    detail: str
    unknown_item_ids: list[str]
