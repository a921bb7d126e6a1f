"""The wide-and-deep baseline: OOV handling, small initialization, early stopping, that it
learns id signal that an item-popularity predictor cannot see, and that it trains the same
whatever the device flag on the CPU (CUDA within tolerance where present)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
import torch

from meta_embed import baseline
from meta_embed.baseline import IdVocab, fit, index_events, predict
from meta_embed.config import WideDeepConfig
from meta_embed.devices import CPU, device_of
from meta_embed.features import fit_spec, movielens_template
from meta_embed.metrics import auc
from meta_embed.tables import TS_TYPE

T = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def world(n_users: int = 200, n_items: int = 40, per_user: int = 40, seed: int = 0):
    """Users and items with identical features: only the ids carry the (user x item) signal."""
    rng = np.random.default_rng(seed)
    taste, latent = rng.normal(size=(n_users, 4)), rng.normal(size=(n_items, 4))
    u = np.repeat(np.arange(n_users), per_user)
    i = rng.integers(0, n_items, len(u))
    y = (rng.random(len(u)) < 1 / (1 + np.exp(-2.5 * (taste[u] * latent[i]).sum(1)))).astype(np.float32)
    events = pa.table(
        {
            "user_id": [f"u{k}" for k in u],
            "item_id": [f"i{k}" for k in i],
            "ts": pa.array([T + dt.timedelta(minutes=int(k)) for k in range(len(u))], TS_TYPE),
            "label": y,
            "rating": pa.array(np.where(y > 0, 5.0, 2.0), pa.float32()),
        }
    )
    users = pa.table(
        {
            "user_id": [f"u{k}" for k in range(n_users)],
            "age": pa.array([25] * n_users, pa.int32()),
            "gender": ["F"] * n_users,
            "occupation": ["x"] * n_users,
            "zip_prefix": ["123"] * n_users,
        }
    )
    items = pa.table(
        {
            "item_id": [f"i{k}" for k in range(n_items)],
            "title": ["t"] * n_items,
            "year": pa.array([1990] * n_items, pa.int32()),
            "genres": [["Drama"]] * n_items,
        }
    )
    return events, users, items, fit_spec(movielens_template(), users, items)


def split(events: pa.Table, seed: int = 1):
    test = np.random.default_rng(seed).random(events.num_rows) < 0.2
    return events.filter(pa.array(~test)), events.filter(pa.array(test))


def popularity(train: pa.Table, test: pa.Table, k: float = 10.0) -> np.ndarray:
    g = train.group_by("item_id").aggregate([("label", "sum"), ("label", "count")])
    mean = float(np.mean(train["label"].to_numpy()))
    rate = dict(
        zip(
            g["item_id"].to_pylist(),
            (g["label_sum"].to_numpy() + k * mean) / (g["label_count"].to_numpy() + k),
        )
    )
    return np.array([rate.get(i, mean) for i in test["item_id"].to_pylist()])


def test_vocab_maps_unseen_ids_to_oov():
    vocab = IdVocab.fit(pa.array(["b", "a", "b"]))
    assert vocab.size == 3
    assert vocab.index(pa.array(["a", "b", "zzz"])).tolist() == [1, 2, 0]


def test_untrained_model_starts_at_zero_wide_and_small_embeddings():
    events, users, items, spec = world(n_users=20)
    model = baseline.build(WideDeepConfig(), spec, users, items, events)
    assert all(float(t.weight.detach().abs().max()) == 0.0 for t in model.wide.values())
    assert float(model.user_emb.weight.detach().std()) < 0.02
    logits = predict(model, index_events(model, events))
    assert np.abs(logits - logits.mean()).max() < 0.05  # no large random scores before training


def test_beats_popularity_when_ids_carry_signal():
    events, users, items, spec = world()
    train, test = split(events)
    cfg = WideDeepConfig(lr=1e-2, embedding_dim=8, max_epochs=8, batch_size=512, oov_rate=0.0)
    result = fit(cfg, spec, users, items, train, test)
    wd = auc(predict(result.model, index_events(result.model, test)), test["label"].to_numpy())
    pop = auc(popularity(train, test), test["label"].to_numpy())
    assert wd > pop + 0.08, (wd, pop)
    assert result.val_score == pytest.approx(wd)


def test_without_user_ids_no_score_reads_the_user_id():
    events, users, items, spec = world(n_users=60)
    train, test = split(events)
    for user_ids in (False, True):
        model = fit(WideDeepConfig(max_epochs=2, user_ids=user_ids), spec, users, items, train).model
        ev = index_events(model, test)
        shuffled = dataclasses.replace(
            ev, user=np.random.default_rng(0).permutation(ev.user)
        )  # ids, not features
        moved = np.abs(predict(model, shuffled) - predict(model, ev)).max()
        assert (moved == 0.0) == (not user_ids), (user_ids, moved)
    no_ids = WideDeepConfig(user_ids=False)
    assert no_ids.crosses == (("age", "genres"), ("item_id", "age")) and model.user_bytes() > 0
    assert baseline.build(no_ids, spec, users, items, train).user_bytes() == 0


def test_unseen_users_score_through_the_oov_bucket():
    events, users, items, spec = world(n_users=60)
    seen = events.filter(pa.array([u != "u0" for u in events["user_id"].to_pylist()]))
    result = fit(WideDeepConfig(max_epochs=2, oov_rate=0.2), spec, users, items, seen)
    probe = events.filter(pa.array([u == "u0" for u in events["user_id"].to_pylist()]))
    ev = index_events(result.model, probe)
    assert np.all(ev.user == 0) and np.all(ev.item > 0)
    # u1 (seen in training, same features) pushed through the OOV bucket scores exactly like u0
    row_u1 = result.model.tables.user_rows(pa.array(["u1"]))[0]
    stranger = dataclasses.replace(
        ev, user=np.zeros_like(ev.user), user_row=np.full_like(ev.user_row, row_u1)
    )
    got, other = predict(result.model, ev), predict(result.model, stranger)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, other, atol=1e-6)
    known = dataclasses.replace(stranger, user=result.model.users.index(pa.array(["u1"] * len(ev))))
    assert np.abs(predict(result.model, known) - got).max() > 1e-3  # a known id does move the score
    # id dropout trains the OOV bucket; without it the OOV wide weight never leaves zero
    assert float(result.model.wide["user_id"].weight.detach()[0].abs()) > 0
    plain = fit(WideDeepConfig(max_epochs=1, oov_rate=0.0), spec, users, items, seen)
    assert float(plain.model.wide["user_id"].weight.detach()[0].abs()) == 0.0


def test_early_stopping_keeps_the_best_epoch():
    events, users, items, spec = world(n_users=80)
    train, valid = split(events, seed=3)
    result = fit(WideDeepConfig(lr=3e-2, max_epochs=6, patience=1), spec, users, items, train, valid)
    scores = [h["val_score"] for h in result.history]
    assert result.epochs == int(np.argmax(scores)) + 1
    assert result.val_score == pytest.approx(max(scores))
    assert len(result.history) <= min(6, result.epochs + 1)


def test_the_device_flag_changes_nothing_on_the_cpu():
    events, users, items, spec = world(n_users=60)
    train, valid = split(events)
    cfg = WideDeepConfig(max_epochs=2, batch_size=256)
    devices = ["cpu"] if torch.cuda.is_available() else ["cpu", "auto"]
    default = fit(cfg, spec, users, items, train, valid)
    expected = predict(default.model, index_events(default.model, valid))
    for device in devices:
        result = fit(dataclasses.replace(cfg, device=device), spec, users, items, train, valid)
        assert device_of(result.model) == CPU
        assert [h["train_loss"] for h in result.history] == [h["train_loss"] for h in default.history]
        np.testing.assert_array_equal(predict(result.model, index_events(result.model, valid)), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_agrees_with_the_cpu():
    events, users, items, spec = world(n_users=60)
    train, valid = split(events)
    cfg = WideDeepConfig(max_epochs=3, batch_size=256)
    cpu = fit(cfg, spec, users, items, train, valid)
    cuda = fit(dataclasses.replace(cfg, device="cuda"), spec, users, items, train, valid)
    assert device_of(cuda.model) == CPU  # scored on the CPU like any other
    assert cuda.history[0]["train_loss"] == pytest.approx(cpu.history[0]["train_loss"], rel=1e-2)
    assert cuda.val_score == pytest.approx(cpu.val_score, abs=0.02)
    ev = index_events(cpu.model, valid)
    on_cpu = predict(cpu.model, ev)
    on_cuda = predict(cpu.model.to_device(torch.device("cuda")), ev)  # the same weights, scored on CUDA
    np.testing.assert_allclose(on_cuda, on_cpu, rtol=1e-4, atol=1e-5)


def test_regression_objective_predicts_ratings():
    events, users, items, spec = world()
    train, valid = split(events)
    cfg = WideDeepConfig(
        objective="regression", lr=1e-2, embedding_dim=8, max_epochs=8, batch_size=512, oov_rate=0.0
    )
    result = fit(cfg, spec, users, items, train, valid)
    target = valid["rating"].to_numpy()
    mae = np.abs(predict(result.model, index_events(result.model, valid)) - target).mean()
    mean_only = np.abs(target - train["rating"].to_numpy().mean()).mean()
    assert mae < mean_only - 0.15, (mae, mean_only)
    assert result.val_score == pytest.approx(-mae, abs=1e-5)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"objective": "ranking"}, "objective"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"oov_rate": 1.0}, "oov_rate"),
        ({"lr": 0.0}, "lr > 0"),
        ({"crosses": (("user_id",),)}, "pairs"),
    ],
)
def test_config_is_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        WideDeepConfig(**bad)


def test_cross_of_unknown_column_is_refused():
    events, users, items, spec = world(n_users=10)
    with pytest.raises(ValueError, match="crosses"):
        baseline.build(WideDeepConfig(crosses=(("user_id", "director"),)), spec, users, items, events)
