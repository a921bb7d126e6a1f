"""Checkpoints: a round trip keeps logits and version; a checkpoint for another feature
spec, or a damaged one, is refused with a message that says what to do."""

from __future__ import annotations

import dataclasses
import json

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


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda m: "[1, 2]", r"model.json: format a JSON list is not 1"),
        (lambda m: "not json at all", r"model.json: not readable JSON"),
        (lambda m: m.replace('"maml": {', '"other": {'), r"model.json: missing key 'maml'"),
        (
            lambda m: m.replace('"meta_dim": 8', '"meta_dim": "abc"'),
            r"ModelConfig.meta_dim must be an integer",
        ),
        (
            lambda m: m.replace('"inner_steps": 3', '"inner_steps": -1'),
            r"MamlConfig.inner_steps must be >= 0",
        ),
    ],
)
def test_a_malformed_model_json_is_refused_naming_the_file_and_field(tmp_path, spec, edit, says):
    checkpoint.save(tiny_model(spec), MamlConfig(), tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.json"
    path.write_text(edit(path.read_text()))
    with pytest.raises(checkpoint.CheckpointError, match=says):
        checkpoint.load(tmp_path / "ckpt")


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda s: "{", r"feature_spec.json: Expecting"),
        (lambda s: "[]", r"feature_spec.json: FeatureSpec: expected a JSON object"),
        (
            lambda s: s.replace('"kind":"bucket"', '"kinds":"bucket"', 1),
            r"FeatureSpec\.item\[\d\]: Column: unknown keys \[.kinds.\]",
        ),
        (
            lambda s: s.replace('"dim":4', '"dim":"four"', 1),
            r"FeatureSpec\.item\[\d\]: Column.dim must be an integer, got .four.",
        ),
    ],
)
def test_a_malformed_feature_spec_is_refused_naming_the_column(tmp_path, spec, edit, says):
    checkpoint.save(tiny_model(spec), MamlConfig(), tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "feature_spec.json"
    path.write_text(edit(path.read_text()))
    with pytest.raises(checkpoint.CheckpointError, match=says):
        checkpoint.load(tmp_path / "ckpt")


def test_an_edited_checkpoint_is_refused_not_renamed(tmp_path, spec):
    """model_version is the content hash; VERSION records it when written. An edit to a file
    (here the MAML inner steps) must not silently become another model_version."""
    version = checkpoint.save(tiny_model(spec), MamlConfig(), tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.json"
    path.write_text(path.read_text().replace('"inner_steps": 3', '"inner_steps": 5'))
    with pytest.raises(checkpoint.CheckpointError, match=f"VERSION says {version} but the files hash to"):
        checkpoint.load(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "VERSION").write_text("0" * 16 + "\n")  # an edited VERSION alone is refused too
    path.write_text(path.read_text().replace('"inner_steps": 5', '"inner_steps": 3'))
    with pytest.raises(checkpoint.CheckpointError, match="VERSION says 0000000000000000"):
        checkpoint.load(tmp_path / "ckpt")


def test_non_finite_weights_are_refused(tmp_path, spec):
    model = tiny_model(spec)
    with torch.no_grad():
        model.meta.weights["b2"][0] = float("nan")
    checkpoint.save(model, MamlConfig(), tmp_path / "ckpt")
    with pytest.raises(checkpoint.CheckpointError, match=r"tensors \['meta.weights.b2'\] hold NaN or inf"):
        checkpoint.load(tmp_path / "ckpt")


def test_a_checkpoint_written_before_a_config_field_existed_keeps_its_version(tmp_path, spec, tables):
    """model.json as written is hashed: an older checkpoint, whose model.json lacks a field
    added since (read with its default), loads under the version it was written with."""
    model = tiny_model(spec)
    path = tmp_path / "old"
    checkpoint.save(model, MamlConfig(), path)
    raw = json.loads((path / "model.json").read_text())
    del raw["model"]["user_id_dim"]  # as written before ModelConfig.user_id_dim existed
    old_text = json.dumps(raw, sort_keys=True, indent=2)
    (path / "model.json").write_text(old_text)
    weights = torch.load(path / "weights.pt", weights_only=True)
    old_version = checkpoint._version(weights, old_text, (path / "feature_spec.json").read_text())
    (path / "VERSION").write_text(old_version + "\n")
    loaded = checkpoint.load(path)
    assert loaded.model_version == old_version and loaded.model_cfg.user_id_dim == 0
