"""Operations commands end to end on a tiny dataset: nightly (incremental) refreshes with
serving indexes, a model release that switches model and embeddings together, rollback."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow.parquet as pq
import pytest

from meta_embed import snapshot
from meta_embed_cli import main as cli
from meta_embed_cli.ops_commands import midnight_utc
from tests.pipeline.refresh.refresh_fixtures import AS_OF, make_dataset, write_checkpoint

FAST = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _manifest(root) -> dict:
    return json.loads((snapshot.current_dir(root) / snapshot.MANIFEST).read_text())


def test_midnight_utc():
    now = dt.datetime(2024, 6, 2, 23, 59, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert midnight_utc(now) == dt.datetime(2024, 6, 3, tzinfo=dt.timezone.utc)


@pytest.mark.slow
def test_nightly_release_rollback(tmp_path):
    ds = make_dataset(tmp_path / "data")
    root = tmp_path / "snapshots"
    common = ["--interactions", ds.interactions, "--users", ds.users, "--items", ds.items, "--out", str(root)]

    day1, day2 = AS_OF.isoformat(), (AS_OF + dt.timedelta(days=1)).isoformat()
    assert cli.main(["nightly", *common, "--checkpoint", ds.checkpoint, "--as-of", day1, *FAST]) == 0
    first = _manifest(root)
    assert first["mode"] == "full" and list((snapshot.current_dir(root) / "indexes").iterdir())
    assert cli.main(["nightly", *common, "--checkpoint", ds.checkpoint, "--as-of", day2, *FAST]) == 0
    second = _manifest(root)
    assert second["mode"] == "incremental" and second["counts"]["users_carried_forward"] > 0

    assert cli.main(["rollback", "--out", str(root)]) == 0
    assert snapshot.current_name(root) == first["name"]

    new_ckpt = tmp_path / "ckpt-new"
    users, items = pq.read_table(ds.users), pq.read_table(ds.items)
    version = write_checkpoint(new_ckpt, users, items, seed=7)
    assert cli.main(["release", *common, "--checkpoint", str(new_ckpt), "--as-of", day2, *FAST]) == 0
    released = _manifest(root)
    assert released["model_version"] == version != first["model_version"]
    assert released["mode"] == "full" and released["checkpoint"] == str(new_ckpt.resolve())

    from serving.serving_config import ServingConfig
    from serving.state import Sources, load_state

    # A server started with only the old checkpoint still finds the released model through the manifest.
    cfg = ServingConfig(root=root, items=ds.items, users=ds.users, checkpoint=ds.checkpoint)
    state = load_state(cfg, Sources.read(cfg))
    assert state.model_version == version and state.snapshot == released["name"]


def test_rollback_without_history_is_an_error(tmp_path, capsys):
    assert cli.main(["rollback", "--out", str(tmp_path)]) == 1
    assert "roll back" in capsys.readouterr().err
