"""`meta-embed index build` / `serve` flags: the CLI parses into a ServingConfig and calls the library."""

from __future__ import annotations

import json

from meta_embed_cli.main import main
from meta_embed_cli.serve_commands import serve, serve_config
from serving.state import Sources, load_state


def _serve_config(argv: list[str]):
    """The ServingConfig `serve` would run with, and the process flags (host, port, ...)."""
    flags = dict(serve.make_context("serve", argv).params)
    server = {k: flags.pop(k) for k in ("host", "port", "workers", "log_level", "log_format")}
    return serve_config(**flags), server


def test_index_build_writes_the_artifacts_and_its_config(tmp_path, capsys) -> None:
    from tests.serving.world import build_world

    w = build_world(tmp_path / "w", n_users=10, n_items=30, in_snapshot=8)
    argv = [
        "--root",
        str(w.root),
        "--checkpoint",
        str(w.ckpt_path),
        "--items",
        str(w.base / "items.parquet"),
        "--users",
        str(w.base / "users.parquet"),
        "--exact-below",
        "20",
        "--items-index",
        "ivf",
    ]
    assert main(["index", "build", *argv]) == 0
    out = capsys.readouterr().out
    assert "items: 30 vectors, IVF1,Flat" in out and "users: 8 vectors, Flat" in out
    cfg, _ = _serve_config(argv)
    state = load_state(cfg, Sources.read(cfg))
    assert str(state.directory) in out  # serve finds what index build wrote
    saved = json.loads((state.directory / "serving_config.json").read_text())
    assert saved["config"]["index"]["exact_below"] == 20


def test_serve_flags_map_to_the_config() -> None:
    cfg, server = _serve_config(
        [
            "--root",
            "r",
            "--items",
            "i.parquet",
            "--fp16",
            "--threads",
            "2",
            "--users-index",
            "hnsw",
            "--items-index",
            "hnsw",
            "--ef-search",
            "64",
            "--max-age",
            "1.5",
            "--reload-interval",
            "0",
            "--port",
            "9000",
            "--access-log",
        ]
    )
    assert (server["host"], server["port"]) == ("127.0.0.1", 9000)  # loopback unless told otherwise
    assert cfg.fp16 and cfg.threads == 2 and cfg.max_age_s == 5400.0 and cfg.reload_interval_s == 0.0
    assert cfg.index.users_approx == "hnsw" and cfg.index.items_approx == "hnsw" and cfg.index.ef_search == 64
    assert cfg.checkpoint is None and cfg.access_log


def test_bad_flags_fail_with_the_flag_named(capsys) -> None:
    assert main(["serve", "--root", "r", "--items", "i", "--threads", "0"]) == 2
    assert "--threads must be > 0" in capsys.readouterr().err
    assert main(["index", "build", "--items", "i"]) == 2  # --root is required
    assert "Missing option '--root'" in capsys.readouterr().err
