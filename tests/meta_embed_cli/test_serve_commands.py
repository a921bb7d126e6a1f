"""`meta-embed index build` / `serve` flags: the CLI parses into a ServingConfig and calls the library."""

from __future__ import annotations

import argparse
import json

import pytest

from meta_embed_cli import serve_commands as cli
from serving.state import Sources, load_state


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_index_build_writes_the_artifacts_and_its_config(tmp_path, capsys) -> None:
    from tests.serving.world import build_world

    w = build_world(tmp_path / "w", n_users=10, n_items=30, in_snapshot=8)
    argv = ["index", "build", "--root", str(w.root), "--checkpoint", str(w.ckpt_path),
            "--items", str(w.base / "items.parquet"), "--users", str(w.base / "users.parquet"),
            "--exact-below", "20", "--items-index", "ivf"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "items: 30 vectors, IVF1,Flat" in out and "users: 8 vectors, Flat" in out
    args = parse(argv)
    state = load_state(cli.config_from_args(args), Sources.read(cli.config_from_args(args)))
    assert str(state.directory) in out  # serve finds what index build wrote
    saved = json.loads((state.directory / "serving_config.json").read_text())
    assert saved["config"]["index"]["exact_below"] == 20


def test_serve_flags_map_to_the_config() -> None:
    args = parse(["serve", "--root", "r", "--items", "i.parquet", "--fp16", "--threads", "2", "--users-index", "hnsw",
                  "--items-index", "hnsw", "--ef-search", "64", "--max-age", "1.5", "--reload-interval", "0",
                  "--port", "9000"])
    cfg = cli.config_from_args(args)
    assert (args.host, args.port) == ("127.0.0.1", 9000)  # loopback unless told otherwise
    assert cfg.fp16 and cfg.threads == 2 and cfg.max_age_s == 5400.0 and cfg.reload_interval_s == 0.0
    assert cfg.index.users_approx == "hnsw" and cfg.index.items_approx == "hnsw" and cfg.index.ef_search == 64
    assert cfg.checkpoint is None


def test_bad_flags_fail_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="ServingConfig.threads must be > 0"):
        cli.config_from_args(parse(["serve", "--root", "r", "--items", "i", "--threads", "0"]))
    with pytest.raises(SystemExit):
        parse(["index", "build", "--items", "i"])  # --root is required
