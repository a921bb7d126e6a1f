"""Checkpoints without pickle: a directory holding `weights.pt` (a flat dict of tensors,
loaded with `weights_only=True`), `model.json` (model + MAML config) and
`feature_spec.json`. `model_version` is a content hash of all three.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from meta_embed import storage
from meta_embed.config import MamlConfig, ModelConfig, from_dict, to_dict
from meta_embed.features import FeatureSpec
from meta_embed.model import TwoBlockModel

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the data it is used with."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    model: TwoBlockModel
    spec: FeatureSpec
    model_cfg: ModelConfig
    maml_cfg: MamlConfig
    model_version: str
    path: Path | None = None


def _version(weights: dict[str, torch.Tensor], model_json: str, spec_json: str) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    h.update(model_json.encode())
    h.update(spec_json.encode())
    return h.hexdigest()[:16]


def _model_json(model_cfg: ModelConfig, maml_cfg: MamlConfig) -> str:
    payload = {"format": FORMAT, "model": to_dict(model_cfg), "maml": to_dict(maml_cfg)}
    return json.dumps(payload, sort_keys=True, indent=2)


def build_model(spec: FeatureSpec, model_cfg: ModelConfig, maml_cfg: MamlConfig) -> TwoBlockModel:
    return TwoBlockModel(spec, model_cfg, maml_cfg.inner_lr if maml_cfg.learn_inner_lr else None)


def model_version(model: TwoBlockModel, maml_cfg: MamlConfig) -> str:
    """The version a checkpoint of `model` would carry."""
    return _version(model.state_dict(), _model_json(model.cfg, maml_cfg), model.spec.to_json())


def save(model: TwoBlockModel, maml_cfg: MamlConfig, path: str | Path) -> str:
    """Write the checkpoint directory atomically (temp dir, then rename); returns model_version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    model_json, spec_json = _model_json(model.cfg, maml_cfg), model.spec.to_json()
    version = _version(weights, model_json, spec_json)
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=path.parent))
    torch.save(weights, tmp / "weights.pt")
    (tmp / "model.json").write_text(model_json)
    (tmp / "feature_spec.json").write_text(spec_json)
    (tmp / "VERSION").write_text(version + "\n")
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return version


def _read_json(path: Path) -> tuple[Any, str]:
    """The parsed JSON of `path` and its text."""
    try:
        text = path.read_text()
        return json.loads(text), text
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path}: not readable JSON ({err}); restore the file written by `meta-embed train`"
        ) from err


def _configs(path: Path) -> tuple[ModelConfig, MamlConfig, str]:
    """The model and MAML configs of model.json and its text, refusing a malformed one naming
    the field. The version hashes the text as written: a config field added later (read with
    its default) leaves an older checkpoint's version unchanged."""
    raw, text = _read_json(path / "model.json")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else f"a JSON {type(raw).__name__}"
        raise CheckpointError(f"{path}/model.json: format {got} is not {FORMAT}; retrain or convert it")
    for key in ("model", "maml"):
        if key not in raw:
            raise CheckpointError(f"{path}/model.json: missing key '{key}'; restore the file or retrain")
    try:
        return from_dict(ModelConfig, raw["model"]), from_dict(MamlConfig, raw["maml"]), text
    except ValueError as err:
        raise CheckpointError(f"{path}/model.json: {err}") from None


def _spec(path: Path) -> tuple[FeatureSpec, str]:
    text = (path / "feature_spec.json").read_text()
    try:
        return FeatureSpec.from_json(text), text
    except (json.JSONDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}/feature_spec.json: {err}; restore the file or retrain") from None


def load(path: str | Path, expect_spec_hash: str | None = None) -> Checkpoint:
    """Load a checkpoint; with `expect_spec_hash`, refuse one built for another feature spec.

    `model_version` is one thing everywhere: the content hash of the weights, model.json's
    configs and feature_spec.json. A VERSION file that disagrees with it means the files
    were edited after the checkpoint was written; such a checkpoint is refused (by the
    refresh job and by serving alike), never published under either version. A checkpoint
    on an object store is read from a local copy (`storage.local_copy`, by its VERSION).
    """
    path = storage.local_copy(path, "VERSION")  # the path itself when local
    for name in ("weights.pt", "model.json", "feature_spec.json"):
        if not (path / name).is_file():
            raise CheckpointError(
                f"{path}: not a checkpoint (missing {name}); point to a directory written by `meta-embed "
                "train`"
            )
    model_cfg, maml_cfg, model_json = _configs(path)
    spec, spec_json = _spec(path)
    if expect_spec_hash is not None and spec.hash != expect_spec_hash:
        raise CheckpointError(
            f"{path}: checkpoint was trained with feature spec {spec.hash}, but the data uses "
            f"{expect_spec_hash}; use a checkpoint trained on this feature spec, or retrain"
        )
    model = build_model(spec, model_cfg, maml_cfg)
    try:
        weights = torch.load(path / "weights.pt", weights_only=True, map_location="cpu")
        model.load_state_dict(weights)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, AttributeError, TypeError) as err:
        raise CheckpointError(
            f"{path}/weights.pt: cannot be loaded into the configured model ({err})"
        ) from err
    bad = [k for k, t in weights.items() if not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(
            f"{path}/weights.pt: tensors {bad} hold NaN or inf; retrain (or restore the file)"
        )
    model.eval()
    version = _version(weights, model_json, spec_json)
    stamp = path / "VERSION"
    written = stamp.read_text().strip() if stamp.is_file() else version
    if written != version:
        raise CheckpointError(
            f"{path}: VERSION says {written} but the files hash to {version}: weights.pt, model.json or "
            "feature_spec.json changed after the checkpoint was written. An edited checkpoint is a new "
            "model: restore the original files, or train one"
        )
    return Checkpoint(model, spec, model_cfg, maml_cfg, version, path)
