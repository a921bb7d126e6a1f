"""The HTTP API in-process: every endpoint, statuses, limits, errors, and the exactness
contract through JSON."""

from __future__ import annotations

import numpy as np
import torch

from meta_embed.features import default_row, encode, take
from tests.serving.test_scorer import CONTEXT, ITEM_ROWS, context_enc
from tests.serving.world import SPEC


def test_healthz_and_info(client, state) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "snapshot": state.snapshot}
    info = client.get("/v1/info").json()
    assert info["model_version"] == state.model_version and info["snapshot"] == state.snapshot
    assert info["as_of"] == state.store.meta.as_of.isoformat() and info["stale"] is False
    assert info["counts"] == {"users_in_snapshot": 30, "items": 300, "users_with_features": 40}
    assert info["indexes"] == {"items": "Flat", "users": "Flat"}


def test_embedding_endpoint_reports_each_status(client, state) -> None:
    body = client.get("/v1/users/u3/embedding").json()
    assert body["status"] == "fresh" and body["dim"] == 8 and body["n_support"] is not None
    np.testing.assert_array_equal(np.float32(body["embedding"]), state.store.embedding(state.store.row("u3")))
    assert client.get("/v1/users/u31/embedding").json()["status"] == "cold"
    default = client.get("/v1/users/stranger/embedding").json()
    assert default["status"] == "default" and default["n_support"] is None


def _http_scores(client, user: str, context: dict | None = CONTEXT) -> tuple[str, np.ndarray]:
    body = {"user_id": user, "item_ids": [f"i{r}" for r in ITEM_ROWS]} | (
        {"context": context} if context else {}
    )
    r = client.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["item_ids"] == body["item_ids"]
    return r.json()["status"], np.array(r.json()["scores"], dtype=np.float64)


def test_http_scores_equal_the_full_adapted_model(client, world) -> None:
    users = torch.tensor([1, 14, 28])
    params = {k: p[users] for k, p in world.params.items()}
    items = torch.tensor([ITEM_ROWS] * len(users))
    with torch.no_grad():
        full = world.model(
            take(encode(world.users, SPEC.user), users),
            take(encode(world.items, SPEC.item), items),
            context_enc(len(users), len(ITEM_ROWS), CONTEXT),
            meta_params=params,
        )
    for j, u in enumerate(users.tolist()):
        status, got = _http_scores(client, f"u{u}")
        assert status == "fresh"
        np.testing.assert_allclose(got, full[j].numpy(), rtol=1e-5, atol=1e-6)


def test_http_scores_of_cold_and_default_users_equal_zero_step_model(client, world) -> None:
    items = take(encode(world.items, SPEC.item), torch.tensor([ITEM_ROWS]))
    ctx = context_enc(1, len(ITEM_ROWS), CONTEXT)
    with torch.no_grad():
        cold = world.model(take(encode(world.users, SPEC.user), torch.tensor([33])), items, ctx)[0]
        default = world.model(default_row(SPEC.user), items, ctx)[0]
    status, got = _http_scores(client, "u33")
    assert status == "cold"
    np.testing.assert_allclose(got, cold.numpy(), rtol=1e-5, atol=1e-6)
    status, got = _http_scores(client, "never-seen")
    assert status == "default"
    np.testing.assert_allclose(got, default.numpy(), rtol=1e-5, atol=1e-6)


def test_unknown_items_are_404_with_their_ids(client) -> None:
    r = client.post("/v1/score", json={"user_id": "u1", "item_ids": ["i1", "nope", "i2", "gone"]})
    assert r.status_code == 404
    assert r.json()["unknown_item_ids"] == ["nope", "gone"] and "nope" in r.json()["detail"]


def test_bad_bodies_are_422_with_a_clear_message(client) -> None:
    cases = [
        ({"user_id": "u1", "item_ids": []}, "item_ids"),
        ({"user_id": "u1", "item_ids": ["i1"] * 1001}, "at most 1000"),
        ({"user_id": "", "item_ids": ["i1"]}, "user_id"),
        ({"item_ids": ["i1"]}, "user_id: Field required"),
        ({"user_id": "u1", "item_ids": ["i1"], "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"user_id": "u1", "item_ids": ["i1"], "context": {"weather": "rain"}}, "unknown keys ['weather']"),
        (b'{"user_id": "\\ud800", "item_ids": ["i1"]}', "body: Invalid JSON"),  # lone surrogate: not text
    ]
    for body, message in cases:
        r = (
            client.post("/v1/score", content=body, headers={"content-type": "application/json"})
            if isinstance(body, bytes)
            else client.post("/v1/score", json=body)
        )
        assert r.status_code == 422, (body, r.text)
        assert message in r.json()["message"], (message, r.json()["message"])
    r = client.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["message"]
    r = client.post("/v1/score", content=b'{"user_id": "\xff"}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "invalid unicode code point" in r.json()["message"]
    assert client.post("/v1/recommend", json={"user_id": "u1", "k": 1001}).status_code == 422
    assert client.post("/v1/recommend", json={"user_id": "u1", "k": 0}).status_code == 422
    assert client.get("/v1/users/u1/similar", params={"k": 0}).status_code == 422


def test_bodies_over_the_limit_are_413(client) -> None:
    big = b'{"user_id": "u1", "item_ids": ["' + b"x" * (1 << 20) + b'"]}'
    r = client.post("/v1/score", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit is 1048576" in r.json()["detail"]

    def chunks():  # no content-length: counted while streaming
        for _ in range(40):
            yield b"x" * 32768

    assert (
        client.post("/v1/score", content=chunks(), headers={"content-type": "application/json"}).status_code
        == 413
    )


def test_recommend_reranks_faiss_candidates_by_the_scorer(client, state) -> None:
    r = client.post("/v1/recommend", json={"user_id": "u2", "k": 5, "exclude_item_ids": ["i0", "unknown"]})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 5 and "i0" not in [i["item_id"] for i in items]
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    e = state.store.embedding(state.store.row("u2"))
    rows = state.scorer.item_rows([i["item_id"] for i in items])
    np.testing.assert_allclose(scores, state.scorer.scores(e, rows), rtol=1e-6)
    # brute force: the top 201 by the retrieval head, minus the excluded item, reranked by the scorer
    all_rows = np.arange(300)
    top_retrieval = all_rows[np.argsort(-(state.scorer.catalog.retrieval @ state.scorer.query(e)))][:201]
    candidates = top_retrieval[top_retrieval != 0][:200]
    best = candidates[np.argsort(-state.scorer.scores(e, candidates), kind="stable")][:5]
    assert [i["item_id"] for i in items] == [f"i{r}" for r in best]


def test_similar_users_exclude_the_user_and_are_sorted(client) -> None:
    r = client.get("/v1/users/u5/similar", params={"k": 4})
    assert r.status_code == 200
    users = r.json()["users"]
    assert len(users) == 4 and "u5" not in [u["user_id"] for u in users]
    sims = [u["similarity"] for u in users]
    assert sims == sorted(sims, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in sims)
    cold = client.get("/v1/users/u36/similar", params={"k": 3}).json()
    assert cold["status"] == "cold" and len(cold["users"]) == 3


def test_hot_routes_answer_as_fastapi_does_and_errors_go_through_fastapi(holder) -> None:
    """`Front` answers POST /v1/score and /v1/recommend by calling their handlers directly;
    the routes as FastAPI serves them (its router, no `Front`) give byte-equal answers, and
    a failing body is re-dispatched to FastAPI for its error response."""
    from fastapi.responses import Response
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.front import Front
    from serving.service import UnknownItems

    plain = create_app(holder)  # the same app without `Front` (its middleware stack is built on first use)
    plain.user_middleware = [m for m in plain.user_middleware if m.cls is not Front]
    requests = [
        ("/v1/score", {"user_id": "u4", "item_ids": ["i1", "i7"], "context": CONTEXT}),
        ("/v1/recommend", {"user_id": "u4", "k": 3}),
        ("/v1/score", {"user_id": "u4", "item_ids": ["i1", "nope"]}),  # 404
        ("/v1/score", {"user_id": "u4", "item_ids": []}),
    ]  # 422
    with TestClient(create_app(holder)) as through_front, TestClient(plain) as fastapi_only:
        for path, body in requests:
            a, b = through_front.post(path, json=body), fastapi_only.post(path, json=body)
            assert (a.status_code, a.content) == (b.status_code, b.content), path
    calls = []

    async def inner(scope, receive, send) -> None:  # stands in for FastAPI
        calls.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def handler(body: bytes) -> Response:
        if body == b"bad":
            raise UnknownItems(["x"])
        return Response(b"hot", 200)

    c = TestClient(Front(inner, max_bytes=100, hot={"/v1/score": handler}))  # (no lifespan: not a context)
    assert c.post("/v1/score", content=b"ok").content == b"hot" and calls == []
    assert c.post("/v1/score", content=b"bad").status_code == 299 and calls == [b"bad"]
    assert c.post("/v1/recommend", content=b"ok").status_code == 299 and calls[-1] == b"ok"
    assert c.post("/v1/score", content=b"x" * 101).status_code == 413 and len(calls) == 2
