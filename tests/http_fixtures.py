"""A loopback image server for download tests, and running a test inside a private network namespace.

`@in_private_network` reruns the decorated test in a child pytest under `unshare -n` (a new network
namespace whose only interface is `lo`), so nothing a test downloads can reach a real network; the
outer test passes when the inner one does. `ImageServer` serves canned answers on 127.0.0.1 from a
thread of the test process (the stdlib server: the test's side, not the code under test) and counts
the requests per path.
"""
from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from PIL import Image

from conftest import REPO

INSIDE = "MMLAKE_TEST_NETNS"


def in_private_network(test):
    """Run `test` in a child pytest inside `unshare -n` (loopback only); skip where that is impossible."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        if os.environ.get(INSIDE) == "1":
            return test(*args, **kwargs)
        if shutil.which("unshare") is None or shutil.which("ip") is None or os.geteuid() != 0:
            pytest.skip("needs root, unshare(1) and ip(8) to run the server in a private network namespace")
        node = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()} | {INSIDE: "1"}
        inner = f"ip link set lo up && exec {sys.executable} -m pytest -q -x -p no:cacheprovider '{node}'"
        proc = subprocess.run(["unshare", "-n", "bash", "-c", inner], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"inside the private network namespace:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
        if " skipped" in proc.stdout and " passed" not in proc.stdout:
            pytest.skip(proc.stdout.strip().splitlines()[-1])

    return wrapper


def jpeg(seed: int, size: tuple[int, int] = (32, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (seed % 256, (7 * seed) % 256, (13 * seed) % 256)).save(out, "JPEG", quality=90)
    return out.getvalue()


class ImageServer:
    """Serves `files` (path → bytes) at 127.0.0.1 with 200, plus canned failures:

    `/missing` 404 · `/flaky/<path>` 500 on the first request, then `<path>` · `/slow/<path>` waits
    `slow_seconds` before answering · `/redirect/<path>` 302 to `<path>` · `/html` an HTML page sent
    as image/jpeg · `/truncated` announces 1000 bytes, sends 100, hangs up · `/huge` announces 10^12
    bytes · `/endless` 4 MB chunked, no length · `/badgzip` a body that is not the gzip it claims ·
    any path with `?delay=S` waits S seconds first. `hits` counts requests per path.
    """

    def __init__(self, files: dict[str, bytes], slow_seconds: float = 5.0):
        self.files, self.slow_seconds = files, slow_seconds
        self.hits: Counter = Counter()
        self.times: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # a client hanging up (kill -9) is expected
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def __enter__(self) -> "ImageServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits[path]

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                path, query = parts.path, parts.query
                with server.lock:
                    server.hits[path] += 1
                    nth = server.hits[path]
                    server.times.append((path, time.monotonic()))
                if query.startswith("delay="):
                    time.sleep(float(query.split("=", 1)[1]))
                self.answer(path, nth)

            def answer(self, path: str, nth: int) -> None:
                if path.startswith("/flaky/") and nth == 1:
                    return self.send(500, b"try again", "text/plain")
                if path.startswith("/slow/"):
                    time.sleep(server.slow_seconds)
                if path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", "/" + path.split("/", 2)[2])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path == "/html":
                    return self.send(200, b"<html><body>Not Found (really)</body></html>", "image/jpeg")
                if path == "/badgzip":
                    self.send_response(200)
                    self.send_header("Content-Encoding", "gzip")
                    return self.send(200, b"this is not gzip", "image/jpeg", status_sent=True)
                if path == "/endless":  # chunked, no Content-Length: only the byte limit stops it
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    chunk = b"\xff" * 65536
                    for _ in range(64):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if path in ("/truncated", "/huge"):
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", "1000" if path == "/truncated" else str(10 ** 12))
                    self.end_headers()
                    self.wfile.write(jpeg(1)[:100])
                    self.close_connection = True
                    return
                name = path.split("/", 2)[2] if path.startswith(("/flaky/", "/slow/")) else path.lstrip("/")
                if name in server.files:
                    return self.send(200, server.files[name], "image/jpeg")
                return self.send(404, b"not found", "text/plain")

            def send(self, status: int, body: bytes, content_type: str, status_sent: bool = False) -> None:
                if not status_sent:
                    self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
