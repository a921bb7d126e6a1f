"""The HTTP API (FastAPI), built by `create_app` so tests run it in-process and uvicorn
runs it for real.

Every handler reads `holder.state` once and answers from that immutable object, so a
hot reload (a background `Watcher`) never mixes snapshots or models inside one answer.
Handlers are `async` and compute inline: each is a few hundred microseconds of
NumPy/PyTorch/FAISS work, cheaper than a hop to a worker thread. The two hot POST
routes are answered by `serving.front.Front`, a thin ASGI layer before FastAPI's stack.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import faiss
import orjson
import threadpoolctl
import torch
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ValidationError

from serving import schemas, service, telemetry
from serving.front import Front
from serving.reload import StateHolder, Watcher
from serving.scorer import ContextError
from serving.serving_config import MAX_ID_LENGTH, MAX_K, ServingConfig
from serving.state import ServingState
from serving.store import Status

UserId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_LENGTH)]
Body = TypeVar("Body", bound=BaseModel)
ERRORS = {
    413: {"model": schemas.ErrorResponse, "description": "request body over the size limit"},
    422: {"model": schemas.InvalidRequest, "description": "invalid request"},
}


def apply_threads(threads: int) -> None:
    """Threads PyTorch, FAISS and NumPy's BLAS (the scorer's products) may use for one request's work."""
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads, user_api="blas")


def _json(payload: dict[str, Any], status_code: int = 200) -> Response:
    """orjson: NumPy arrays go in as they are (float32 in its shortest round-trip form), ~20x json's speed."""
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code, media_type="application/json"
    )


def _served(state: ServingState, user: service.UserEmbedding) -> dict[str, Any]:
    telemetry.ANSWERS[user.status].inc()
    return {
        "user_id": user.user_id,
        "status": user.status.value,
        "model_version": state.model_version,
        "snapshot": state.snapshot,
        "as_of": state.store.meta.as_of.isoformat(),
    }


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that parses its body itself with `_parse`."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _parse(body: bytes, model: type[Body]) -> Body:
    """The JSON body as `model`, parsed and validated in one pass by pydantic-core (about 40 us
    cheaper per request than FastAPI's json.loads + validation); 422 like FastAPI's on failure."""
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]
        ) from None


def _validation_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in detail[:10]]
    return {"detail": detail, "message": "invalid request: " + "; ".join(parts)}


def _install_errors(app: FastAPI) -> None:
    """Handlers for exactly the errors of `serving.front.HANDLED`."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_body(list(err.errors())), 422)

    @app.exception_handler(ContextError)
    async def bad_context(_: Request, err: ContextError) -> JSONResponse:
        return JSONResponse(
            _validation_body([{"loc": ["body", "context"], "msg": str(err), "type": "context"}]), 422
        )

    @app.exception_handler(service.UnknownItems)
    async def unknown_items(_: Request, err: service.UnknownItems) -> JSONResponse:
        return JSONResponse({"detail": str(err), "unknown_item_ids": err.item_ids[:1000]}, 404)


def _holder(source: ServingState | StateHolder | str | Path, config: ServingConfig | None) -> StateHolder:
    if isinstance(source, StateHolder):
        return source
    if isinstance(source, ServingState):
        return StateHolder(source, config)
    if config is None:
        raise ValueError("create_app(root) needs a ServingConfig (items table, checkpoint, ...)")
    return StateHolder.open(dataclasses.replace(config, root=source))  # ServingConfig types it


def create_app(
    state_or_root: ServingState | StateHolder | str | Path,
    config: ServingConfig | None = None,
    *,
    watch: bool | None = None,
) -> FastAPI:
    """The API over a loaded state, a holder, or a snapshot root (then `config` says the rest).

    With a root (or a holder opened from one) and `config.reload_interval_s` > 0, a
    background thread polls ROOT/CURRENT while the app runs (`watch=False` turns it off).
    """
    holder = _holder(state_or_root, config)
    config = holder.config or config
    if config is not None:
        apply_threads(config.threads)
    interval = config.reload_interval_s if config is not None and holder.sources is not None else 0.0
    watching = bool(interval > 0 and (watch is None or watch))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        gc.freeze()  # the loaded model, state and imports stay: out of GC passes (reload re-freezes)
        watcher = Watcher(holder, interval).start() if watching else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.stop()
            holder.close()

    app = FastAPIOffline(  # /docs and /redoc from assets in the installed package, not a CDN
        title="meta-embed serving",
        version="1",
        lifespan=lifespan,
        description="Meta embeddings, scoring, retrieval and lookalikes (see docs/api.md).",
    )
    app.state.holder = holder
    _install_errors(app)
    hot = _routes(app, holder, watching, interval)
    max_bytes = config.max_body_bytes if config is not None else ServingConfig.max_body_bytes
    app.add_middleware(Front, max_bytes=max_bytes, hot=hot, routes=app.router.routes)
    return app


def _routes(
    app: FastAPI, holder: StateHolder, watching: bool, interval: float
) -> dict[str, Callable[[bytes], Response]]:
    """Declare the routes; returns the hot POST routes' handlers of a raw body, by path, for `Front`."""

    def score_body(raw: bytes) -> Response:
        body = _parse(raw, schemas.ScoreRequest)
        state = holder.state
        user, logits = service.score(state, body.user_id, body.item_ids, body.context)
        return _json(_served(state, user) | {"item_ids": body.item_ids, "scores": logits})

    def recommend_body(raw: bytes) -> Response:
        body = _parse(raw, schemas.RecommendRequest)
        state = holder.state
        user, rec = service.recommend(
            state, body.user_id, body.k, body.exclude_item_ids, body.context, body.exclude_seen
        )
        items = [
            {"item_id": i, "score": s, "retrieval_score": r}
            for i, s, r in zip(rec.item_ids, rec.scores.tolist(), rec.retrieval_scores.tolist())
        ]
        return _json(_served(state, user) | {"items": items})

    @app.get("/healthz", response_model=schemas.Health)
    async def healthz() -> Response:
        return _json({"status": "ok", "snapshot": holder.state.snapshot})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(telemetry.exposition(holder), media_type=telemetry.CONTENT_TYPE)

    @app.get("/v1/info", response_model=schemas.InfoResponse)
    async def info() -> Response:
        return _json(_info(holder, watching, interval))

    @app.get("/v1/users/{user_id}/embedding", response_model=schemas.EmbeddingResponse, responses=ERRORS)
    async def embedding(user_id: UserId) -> Response:
        state = holder.state
        user = service.user_embedding(state, user_id)
        last = user.last_event_ts.isoformat() if user.last_event_ts else None
        return _json(
            _served(state, user)
            | {
                "dim": len(user.embedding),
                "embedding": user.embedding,
                "n_support": user.n_support,
                "last_event_ts": last,
            }
        )

    @app.post(
        "/v1/score",
        response_model=schemas.ScoreResponse,
        openapi_extra=_request_body(schemas.ScoreRequest),
        responses={404: {"model": schemas.UnknownItemsResponse, "description": "unknown item ids"}, **ERRORS},
    )
    async def score(request: Request) -> Response:
        return score_body(await request.body())

    @app.post(
        "/v1/recommend",
        response_model=schemas.RecommendResponse,
        openapi_extra=_request_body(schemas.RecommendRequest),
        responses=ERRORS,
    )
    async def recommend(request: Request) -> Response:
        return recommend_body(await request.body())

    @app.get("/v1/users/{user_id}/similar", response_model=schemas.SimilarResponse, responses=ERRORS)
    async def similar(user_id: UserId, k: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> Response:
        state = holder.state
        user, ids, sims = service.similar(state, user_id, k)
        users = [{"user_id": u, "similarity": s} for u, s in zip(ids, sims.tolist())]
        return _json(_served(state, user) | {"users": users})

    return {"/v1/score": score_body, "/v1/recommend": recommend_body}


def _info(holder: StateHolder, watching: bool, interval: float) -> dict[str, Any]:
    state, stats = holder.state, holder.stats
    store, scorer = state.store, state.scorer
    age = store.age_s(dt.datetime.now(dt.UTC))
    return {
        "model_version": state.model_version,
        "snapshot": state.snapshot,
        "as_of": store.meta.as_of.isoformat(),
        "age_s": age,
        "stale": store.known_status(dt.datetime.now(dt.UTC), state.max_age_s) == Status.STALE,
        "max_age_s": state.max_age_s,
        "embedding_mode": store.meta.embedding_mode,
        "embedding_dim": store.meta.dim,
        "embedding_dtype": str(store.embeddings.dtype),
        "counts": {
            "users_in_snapshot": len(store),
            "items": scorer.item_count,
            "users_with_features": scorer.user_count,
        },
        "indexes": {"items": state.items_index.factory, "users": state.users_index.factory},
        "loaded_at": state.loaded_at.isoformat(),
        "reload": {
            "checks": stats.checks,
            "swaps": stats.swaps,
            "failures": stats.failures,
            "last_error": stats.last_error,
            "watching": watching,
            "interval_s": interval if watching else None,
        },
    }
