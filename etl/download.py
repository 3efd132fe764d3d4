"""Downloading images by URL: bounded concurrency, per-host pacing, retries with backoff, limits.

`Downloader.submit(url)` fetches one URL on a thread pool with a shared `httpx.Client` (connection
pooling, redirects, HTTP parsing: nothing hand-written here) and returns a future `Download`: the
bytes, or `error = (kind, message)` naming the HTTP status or the reason. A download never raises.

Error kinds: `http_<status>` (after retries for 408/425/429/5xx), `timeout` (no answer, or the whole
body not read within `timeout`), `too_large` (Content-Length or the body over `max_bytes`, refused
before reading what is over), `protocol_error` (a truncated body, a broken response),
`connection_error`, `too_many_redirects`, `bad_url`, `bad_encoding` (a Content-Encoding that does not
decode), `sha256_mismatch` (an expected hash was given). The `TRANSIENT_KINDS` among them are
fetched again when the ingest is run again.
Whether the bytes are an image is decided later, by ingest's header sniffing, like for any source.
"""
from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from etl import __version__

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# failures that may pass: retried within a run, and fetched again by the next ingest of the list
# (etl/ingest/refetch.py); the others (404, too_large, bad_url, ...) only with `--retry-failed`
TRANSIENT_KINDS = frozenset({"timeout", "connection_error", "protocol_error", *(f"http_{s}" for s in RETRY_STATUSES)})
MAX_BACKOFF = 30.0  # seconds: the longest wait between two attempts (Retry-After included)
CHUNK = 1 << 16


@dataclass(frozen=True)
class DownloadOptions:
    concurrency: int = 16  # requests in flight at once (threads, and pooled connections)
    timeout: float = 30.0  # seconds for one attempt: connect, answer and the whole body
    retries: int = 2  # further attempts after a transient failure (5xx, 429, timeouts, resets)
    backoff: float = 1.0  # seconds before the first retry; doubled for each next one
    max_bytes: int = 32 << 20  # larger images are refused (a bound on memory per download)
    per_host_rate: float = 0.0  # requests per second to one host (0: no limit)
    max_redirects: int = 5
    user_agent: str = f"mmlake/{__version__} (image downloader)"


@dataclass
class Download:
    """What fetching one URL gave: bytes, or the reason there are none."""

    url: str
    data: bytes | None = None
    error: tuple[str, str] | None = None  # (kind, message)
    attempts: int = 0

    def verified(self, sha256: str | None) -> "Download":
        """This download, or a `sha256_mismatch` failure when its bytes do not hash to `sha256`."""
        if self.data is None or not sha256:
            return self
        got = hashlib.sha256(self.data).hexdigest()
        if got == sha256.strip().lower():
            return self
        return Download(self.url, error=("sha256_mismatch", f"{self.url}: sha256 {got}, expected {sha256}"),
                        attempts=self.attempts)


class Failure(Exception):
    """One failed attempt: its error kind, message, and whether another attempt may succeed."""

    def __init__(self, kind: str, message: str, retry: bool = False, wait: float | None = None):
        super().__init__(message)
        self.kind, self.retry, self.wait = kind, retry, wait


class HostPacer:
    """Spaces the requests to one host at least `1 / rate` seconds apart (across all threads)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_slot: dict[str, float] = {}
        self.lock = threading.Lock()

    def wait(self, host: str) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_slot.get(host, 0.0))
            self.next_slot[host] = slot + self.interval
            if len(self.next_slot) > 100_000:  # a LAION-size list has millions of hosts: forget past slots
                self.next_slot = {h: t for h, t in self.next_slot.items() if t > now}
        if slot > now:
            time.sleep(slot - now)


class Downloader:
    """Fetches URLs on `concurrency` threads sharing one pooled HTTP client; use as a context manager."""

    def __init__(self, opts: DownloadOptions | None = None):
        self.opts = opts or DownloadOptions()
        limits = httpx.Limits(max_connections=self.opts.concurrency, max_keepalive_connections=self.opts.concurrency)
        self.client = httpx.Client(follow_redirects=True, max_redirects=self.opts.max_redirects, limits=limits,
                                   timeout=httpx.Timeout(self.opts.timeout), headers={"User-Agent": self.opts.user_agent})
        self.pool = ThreadPoolExecutor(max_workers=self.opts.concurrency, thread_name_prefix="download")
        self.pacer = HostPacer(self.opts.per_host_rate)

    def __enter__(self) -> "Downloader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop downloads not started yet, wait for those running (each ends within `timeout`)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    def submit(self, url: str) -> Future:
        return self.pool.submit(self.fetch, url)

    def fetch(self, url: str) -> Download:
        """One URL, retried on transient failures with exponential backoff (or the server's Retry-After)."""
        for attempt in range(self.opts.retries + 1):
            try:
                self.pacer.wait(host_of(url))
                return Download(url, data=self.attempt(url), attempts=attempt + 1)
            except Failure as failure:
                if not failure.retry or attempt == self.opts.retries:
                    return Download(url, error=(failure.kind, f"{url}: {failure}"), attempts=attempt + 1)
                delay = failure.wait if failure.wait is not None else self.opts.backoff * 2 ** attempt
                time.sleep(min(delay, MAX_BACKOFF))
        raise AssertionError("unreachable: the last attempt returns")

    def attempt(self, url: str) -> bytes:
        """The body of one GET, or a Failure; the body is streamed so limits apply while reading."""
        if urlsplit(url).scheme not in ("http", "https"):  # host_of has parsed it: no ValueError here
            raise Failure("bad_url", "not an http(s) URL")
        deadline = time.monotonic() + self.opts.timeout
        try:
            with self.client.stream("GET", url) as response:
                check_status(response)
                check_length(response, self.opts.max_bytes)
                return read_body(response, self.opts.max_bytes, deadline, self.opts.timeout)
        except httpx.TimeoutException as exc:
            raise Failure("timeout", f"no answer within {self.opts.timeout:g} s ({type(exc).__name__})", retry=True)
        except httpx.TooManyRedirects as exc:
            raise Failure("too_many_redirects", str(exc))
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise Failure("bad_url", str(exc))
        except httpx.RemoteProtocolError as exc:
            raise Failure("protocol_error", str(exc), retry=True)
        except httpx.TransportError as exc:
            raise Failure("connection_error", f"{type(exc).__name__}: {exc}", retry=True)
        except httpx.DecodingError as exc:
            raise Failure("bad_encoding", f"the body does not decode as its Content-Encoding says: {exc}")
        except httpx.HTTPError as exc:  # any other failure of the client: recorded, never raised
            raise Failure("http_error", f"{type(exc).__name__}: {exc}")


def host_of(url: str) -> str:
    """The URL's host (what per-host pacing keys on); a URL that does not parse is a `bad_url`."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError as exc:
        raise Failure("bad_url", f"unparsable URL: {exc}") from None


def check_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    retry = response.status_code in RETRY_STATUSES
    raise Failure(f"http_{response.status_code}", f"HTTP {response.status_code} {response.reason_phrase}",
                  retry=retry, wait=retry_after(response) if retry else None)


def retry_after(response: httpx.Response) -> float | None:
    """A Retry-After given in seconds (the HTTP-date form is rare for images and is ignored)."""
    value = response.headers.get("retry-after", "")
    return float(value) if value.strip().isdigit() else None


def check_length(response: httpx.Response, max_bytes: int) -> None:
    """Refuse a body announced as over the limit before reading any of it."""
    length = response.headers.get("content-length", "")
    if length.strip().isdigit() and int(length) > max_bytes:
        raise Failure("too_large", f"Content-Length {int(length):,} bytes is over the {max_bytes:,} byte limit")


def read_body(response: httpx.Response, max_bytes: int, deadline: float, timeout: float) -> bytes:
    """The (decoded) body, stopping as soon as it passes `max_bytes` or the attempt's deadline."""
    body, size = [], 0
    for chunk in response.iter_bytes(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise Failure("too_large", f"body over the {max_bytes:,} byte limit")
        if time.monotonic() > deadline:
            raise Failure("timeout", f"body not read within {timeout:g} s ({size:,} bytes so far)", retry=True)
        body.append(chunk)
    return b"".join(body)
