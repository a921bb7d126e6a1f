"""/docs and /redoc rendered by a real headless browser (Chromium, where one is installed:
`apt-get install chromium`) against a real server, with every host but 127.0.0.1
unresolvable: the pages' scripts come from the server, so the operations render.
`test_operability.py` checks the same pages without a browser."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.serving.test_faults_live import Server

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(BROWSER is None, reason="no Chromium installed")]


def rendered(url: str) -> str:
    """The page's DOM after its scripts ran, with the network limited to loopback."""
    argv = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--dump-dom", url]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout


def test_docs_and_redoc_render_their_operations_offline(tmp_path) -> None:
    server = Server(tmp_path)
    try:
        swagger = rendered(server.base + "/docs")
        assert "opblock-summary-path" in swagger and "/v1/recommend" in swagger, swagger[:2000]
        redoc = rendered(server.base + "/redoc")
        assert "/v1/recommend" in redoc and "meta-embed serving" in redoc, redoc[:2000]
    finally:
        server.stop()
