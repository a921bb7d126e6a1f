"""Checkpoints: a round trip keeps logits and version; a checkpoint for another feature
spec, or a damaged one, is refused with a message that says what to do."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from meta_embed import checkpoint
from meta_embed.config import MamlConfig
from meta_embed.features import take

from .conftest import tiny_model


def _logits(model, tables):
    users = torch.arange(5)
    items = torch.arange(7).expand(5, -1)
    with torch.no_grad():
        return model(take(tables.users, users), take(tables.items, items))


def test_round_trip_keeps_logits_and_model_version(tmp_path, spec, tables):
    model = tiny_model(spec, mode="weights", learned_inner_lr=0.2)
    maml = MamlConfig(inner_steps=2, learn_inner_lr=True, max_support=30)
    version = checkpoint.save(model, maml, tmp_path / "ckpt")
    loaded = checkpoint.load(tmp_path / "ckpt", expect_spec_hash=spec.hash)
    assert loaded.model_version == version == checkpoint.model_version(model, maml)
    assert (loaded.maml_cfg, loaded.model_cfg, loaded.spec) == (maml, model.cfg, spec)
    torch.testing.assert_close(_logits(loaded.model, tables), _logits(model, tables), rtol=0, atol=0)
    with torch.no_grad():
        model.meta.weights["wv"].add_(0.1)
    assert checkpoint.model_version(model, maml) != version  # the version tracks the weights


def test_checkpoint_for_another_feature_spec_is_refused(tmp_path, spec):
    checkpoint.save(tiny_model(spec), MamlConfig(), tmp_path / "ckpt")
    other = dataclasses.replace(spec, user=spec.user[:-1])
    expected = f"trained with feature spec {spec.hash}.*{other.hash}.*retrain"
    with pytest.raises(checkpoint.CheckpointError, match=expected):
        checkpoint.load(tmp_path / "ckpt", expect_spec_hash=other.hash)


def test_missing_or_damaged_files_are_reported(tmp_path, spec):
    with pytest.raises(checkpoint.CheckpointError, match="missing weights.pt"):
        checkpoint.load(tmp_path)
    checkpoint.save(tiny_model(spec), MamlConfig(), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(checkpoint.CheckpointError, match="weights.pt: cannot be loaded"):
        checkpoint.load(tmp_path / "ckpt")
