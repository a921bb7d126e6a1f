"""What an on-call engineer reads: /metrics (Prometheus text format) counts and times every
request by route template and answer status, and /docs and /redoc work with no network:
the pages reference only assets the server itself serves."""

from __future__ import annotations

import re

from tests.serving.world import metric_samples


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, by (name, sorted labels)."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return metric_samples(r.text)


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_requests_by_route_template_status_and_embedding_status(client, state) -> None:
    known, item = "u3", "i0"  # in the snapshot (fresh); "someone-new" has no features (default)
    before = scrape(client)
    for _ in range(3):
        assert client.post("/v1/score", json={"user_id": known, "item_ids": [item]}).status_code == 200
    assert client.post("/v1/score", json={"user_id": known, "item_ids": ["no-such-item"]}).status_code == 404
    assert client.get("/v1/users/someone-new/embedding").status_code == 200
    assert client.get(f"/v1/users/{known}/embedding").status_code == 200
    assert client.get("/no/such/path").status_code == 404
    after = scrape(client)

    requests = "meta_embed_requests_total"
    assert delta(after, before, requests, route="/v1/score", method="POST", status="200") == 3
    assert delta(after, before, requests, route="/v1/score", method="POST", status="404") == 1
    embedding = "/v1/users/{user_id}/embedding"  # the template, not the user's id
    assert delta(after, before, requests, route=embedding, method="GET", status="200") == 2
    assert delta(after, before, requests, route="unmatched", method="GET", status="404") == 1
    assert (
        delta(after, before, requests, route="/metrics", method="GET", status="200") == 1
    )  # the first scrape
    count = "meta_embed_request_duration_seconds_count"
    assert delta(after, before, count, route="/v1/score", status="200") == 3
    assert not any(user in str(key) for key in after for user in (known, "someone-new"))

    statuses = {s: delta(after, before, "meta_embed_answers_total", embedding_status=s) for s in
                ("fresh", "stale", "cold", "default")}  # fmt: skip
    assert statuses == {"fresh": 4, "stale": 0, "cold": 0, "default": 1}  # 3 scores + 1 embedding; 1

    assert after[("meta_embed_snapshot_info", tuple(sorted({
        "snapshot": state.snapshot, "model_version": state.model_version,
        "as_of": state.store.meta.as_of.isoformat()}.items())))] == 1  # fmt: skip
    assert after[("meta_embed_snapshot_users", ())] == len(state.store)


def test_api_docs_reference_only_assets_the_server_serves(client) -> None:
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", r.text)
        assert urls, r.text
        external = [u for u in urls if re.match(r"(https?:)?//", u)]
        assert not external, f"{page} loads {external}"
        for url in urls:
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 0, url
    assert client.get("/openapi.json").json()["paths"]["/v1/score"]


def test_recommendations_leave_out_the_items_the_user_has_seen(tmp_path) -> None:
    """exclude_seen (default true) drops the snapshot's seen items of the user, and only
    those: the rest of the ranking is the unexcluded one; an id the catalog lacks is ignored."""
    import datetime as dt

    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.reload import StateHolder
    from tests.serving.world import build_world, publish

    as_of = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    w = build_world(tmp_path / "w", n_users=12, n_items=60, in_snapshot=8, as_of=as_of)
    holder = StateHolder.open(w.config())
    with TestClient(create_app(holder)) as client:

        def ranked(user: str, **flags) -> list[str]:
            r = client.post("/v1/recommend", json={"user_id": user, "k": 10} | flags)
            assert r.status_code == 200, r.text
            return [i["item_id"] for i in r.json()["items"]]

        before = ranked("u1")
        seen = [before[0], before[3], "not-in-the-catalog"]
        lists = [seen if u == 1 else [] for u in range(8)]
        publish(w.root, w.version, [f"u{i}" for i in range(8)], w.embeddings[:8], as_of, "r2", seen=lists)
        assert holder.refresh() is True
        full = ranked("u1", exclude_seen=False, k=20)
        assert full[:10] == before  # same embeddings: same ranking
        assert ranked("u1") == [i for i in full if i not in seen][:10]
        assert ranked("u1", exclude_item_ids=[full[1]]) == [i for i in full if i not in seen + [full[1]]][:10]
        assert ranked("u2") == ranked("u2", exclude_seen=False)  # nothing seen: nothing left out
    assert list(holder.state.store.seen(holder.state.store.row("u1"))) == list(
        holder.state.scorer.item_rows(seen[:2])
    )
