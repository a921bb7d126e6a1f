"""`meta-embed data prepare|synth`: a summary with the dead-letter counts, the config beside
the output, and validation errors that name the flag."""

from __future__ import annotations

import json

from meta_embed_cli.main import main


def test_prepare_prints_what_it_wrote_and_refuses_an_unknown_source(tmp_path, ml100k_dir, capsys):
    assert main(["data", "prepare", "--source", str(ml100k_dir), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "6 interactions" in printed and "dead-lettered 2 (duplicate: 1, malformed_row: 1)" in printed
    assert main(["data", "prepare", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "--source" in capsys.readouterr().err


def test_synth_writes_its_config_beside_the_data(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "synth",
                "--users",
                "50",
                "--items",
                "20",
                "--events-per-user",
                "5",
                "--seed",
                "1",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    assert "50 users, 20 items" in capsys.readouterr().out
    assert json.loads((tmp_path / "s" / "config.json").read_text())["config"]["n_users"] == 50
    assert main(["data", "synth", "--users", "0", "--items", "20", "--out", str(tmp_path / "t")]) == 2
    assert "--users must be > 0" in capsys.readouterr().err
