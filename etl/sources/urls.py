"""URL-list reader (`--format urls`): image URLs + captions or conversations → downloaded samples.

Lists come as parquet (LAION/CC3M/CC12M/img2dataset `url` + `caption`/`txt`), CSV/TSV with a header
row, JSON/JSONL records (LLaVA records whose `image` is an http(s) URL, or any object with a URL
key), or a `.txt` of one URL per line. Records are streamed; each one's images are fetched by
`etl.download.Downloader` while the records after it are read, at most `window` records ahead, and
yielded in file order with the downloaded bytes in `ImageRef.data` (and the URL in `ImageRef.path`,
so the lake keeps it in `samples.image_paths`). Ingest then sniffs, hashes and stores the bytes
content-addressed, like any embedded image.

Columns (matched case-insensitively; `--url-column`/`--caption-column` override):
- the URL: `url`, `image_url`, `img_url`, `imageurl`, `image`, `images`, `image_urls` (a string or a
  list of strings);
- the dialogue: `conversations` (LLaVA turns), `messages` (LLaMA-Factory / OpenAI), else a caption
  (`caption`, `txt`, `text`) asked for by `--prompt` (default `<image>`); with none, the images are
  stored without a sample (image-only lists);
- `id`, `key`, `sample_id` or `uid` → `orig_id`; a `sha256` / `sha256hash` column is checked against
  the downloaded bytes (a mismatch is a `sha256_mismatch` error); every other column goes to `meta`.

A record whose download fails becomes one `errors` row naming the URL and the HTTP status or the
reason (see etl/download.py). A rerun resumes from the file's checkpoint, so only the records past
the last committed batch are fetched again; and it fetches again the records whose download failed
with a failure that may pass (`refetched_on_rerun`; every failure with `--retry-failed`): ingest
reads just those rows (option `only_rows`, see etl/ingest/refetch.py).
"""
from __future__ import annotations

import csv
import io
import sys
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from itertools import takewhile
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from etl import storage
from etl.images import EXTENSIONS
from etl.sources import register
from etl.sources.base import ImageRef, SourceReader, SourceRecord, as_text_id, raw_json
from etl.sources.hf_parquet import (ColumnLayout, HFParquetReader, element_type, is_string, iter_row_batches,
                                    parquet_metadata, parquet_source)
from etl.sources.jsonfiles import iter_json_records
from etl.sources.jsonstream import BadStretch
from etl.sources.llava import MalformedRecord, llava_turns
from etl.sources.messages import MalformedMessages, messages_to_turns
from etl.sources.webdataset import caption_turns, prompt_option

if TYPE_CHECKING:  # etl.download imports httpx (0.5 s): only when a list is read, not at CLI start-up
    from etl.download import Download, DownloadOptions, Downloader

URL_KEYS = ("url", "image_url", "img_url", "imageurl", "image", "images", "image_urls")
CAPTION_KEYS = ("caption", "txt", "text")
ID_KEYS = ("id", "key", "sample_id", "uid")
SHA256_KEYS = ("sha256", "sha256hash")
WINDOW_PER_THREAD = 4  # records read ahead per download thread: keeps every thread busy, memory bounded


@dataclass
class Pending:
    """A record whose downloads are under way, with the hashes its bytes must have (if given)."""

    record: SourceRecord
    downloads: list[Future] = field(default_factory=list)
    sha256: list[str | None] = field(default_factory=list)


@register
class UrlListReader(SourceReader):
    """Reads URL lists (parquet, CSV/TSV, JSON/JSONL, txt) and downloads their images, in file order."""

    format_name = "urls"
    fetches = True
    extensions = (".parquet", ".csv", ".tsv", ".json", ".jsonl", ".txt")

    @classmethod
    def sniff(cls, path: str) -> bool:
        """A list of image URLs: a parquet without image bytes (LAION, CC3M, img2dataset's input) or a
        CSV/TSV with a header, whose URL column's first values are http(s) URLs of images (see
        image_url_column); what else could such a file be ingested for. JSON/txt lists are read only
        with `--format urls`."""
        if path.lower().endswith((".csv", ".tsv")):
            return csv_url_column(path) is not None
        return HFParquetReader.sniff(path) and parquet_url_column(path) is not None

    @classmethod
    def refetched_on_rerun(cls, kind: str, every_kind: bool) -> bool:
        """Timeouts, resets, truncated bodies, 408/425/429/5xx (`TRANSIENT_KINDS`) are fetched again by
        the next ingest; a 404, a page that is not an image, a too-large body only with `every_kind`."""
        from etl.download import TRANSIENT_KINDS

        return every_kind or kind in TRANSIENT_KINDS

    def download_options(self) -> DownloadOptions:
        from etl.download import DownloadOptions

        names = {f.name for f in fields(DownloadOptions)}
        return DownloadOptions(**{k: v for k, v in self.options.items() if k in names and v is not None})

    def read_file(self, path: str, name: str, start_row: int = 0, end_row: int | None = None) -> Iterator[SourceRecord]:
        from etl.download import Downloader

        opts = self.download_options()
        window = max(1, opts.concurrency * WINDOW_PER_THREAD)
        with Downloader(opts) as downloader:
            fetch = RecentFetches(downloader, capacity=window)
            pending: deque[Pending] = deque()
            for row, item in self.wanted_rows(path, start_row):
                pending.append(self.start(item, name, row, fetch))
                if len(pending) >= window:
                    yield finish(pending.popleft())
            while pending:
                yield finish(pending.popleft())

    def wanted_rows(self, path: str, start_row: int) -> Iterator[tuple[int, Any]]:
        """(row, record) from `start_row` on; only the rows in option `only_rows` when it is given
        (the failed records a rerun fetches again), and no further than the last of them."""
        only = self.options.get("only_rows")
        if only is None:
            return self.rows(path, start_row)
        last = max(only, default=-1)
        return ((row, item) for row, item in takewhile(lambda pair: pair[0] <= last, self.rows(path, start_row))
                if row in only)

    def rows(self, path: str, start_row: int) -> Iterator[tuple[int, Any]]:
        """(row, record) of the list file from `start_row` on (a format with its own layout overrides it)."""
        return iter_rows(path, start_row)

    def start(self, item: Any, name: str, row: int, fetch: "RecentFetches") -> Pending:
        """The record of one list row, its downloads started."""
        if isinstance(item, BadStretch):
            return Pending(SourceRecord(name, row, raw=item.raw, error=(item.kind, item.message)))
        record = SourceRecord(name, row, raw=raw_json(item))
        try:
            urls, sha256 = self.fill(record, item)
        except (MalformedRecord, MalformedMessages) as exc:
            record.error = ("malformed_record", str(exc))
            return Pending(record)
        record.images = [ImageRef(path=url) for url in urls]
        return Pending(record, [fetch(url) for url in urls], sha256)

    def fill(self, record: SourceRecord, item: Any) -> tuple[list[str], list[str | None]]:
        """Set the record's id, turns and meta from a row; return its URLs and their expected sha256."""
        if not isinstance(item, dict):
            raise MalformedRecord(f"record is a {type(item).__name__}, not an object")
        keys = {k.lower(): k for k in item}
        url_key = self.options.get("url_column") or first_key(keys, URL_KEYS)
        urls = [u.strip() for u in as_list(item.get(url_key)) if isinstance(u, str) and u.strip()]
        if url_key and len(urls) != len(as_list(item.get(url_key))):
            raise MalformedRecord(f"`{url_key}` must be a URL or a list of URLs, got {item.get(url_key)!r:.200}")
        id_key, sha_key = first_key(keys, ID_KEYS), first_key(keys, SHA256_KEYS)
        record.orig_id = as_text_id(item.get(id_key)) if id_key else None
        dialogue_key = self.dialogue(record, item, keys)
        if not urls and dialogue_key not in ("conversations", "messages"):  # only dialogues may be text-only
            raise MalformedRecord(f"no URL (looked for {self.options.get('url_column') or URL_KEYS})")
        record.images_only = bool(urls) and dialogue_key is None
        kept = {k: v for k, v in item.items() if k not in (url_key, id_key, dialogue_key)}
        record.meta = kept | record.meta  # + what the dialogue set aside (turn extras, system prompt)
        return urls, expected_hashes(item.get(sha_key) if sha_key else None, len(urls))

    def dialogue(self, record: SourceRecord, item: dict, keys: dict[str, str]) -> str | None:
        """Set the record's turns from conversations, messages or a caption; the key used (or None)."""
        if "conversations" in item:
            record.conversations, extras = llava_turns(item["conversations"])
            if extras:
                record.meta["turn_extras"] = extras
            return "conversations"
        if "messages" in item:
            dialogue = messages_to_turns(item["messages"])
            record.conversations = dialogue.turns
            if dialogue.system:
                record.meta["system"] = dialogue.system[0] if len(dialogue.system) == 1 else dialogue.system
            return "messages"
        caption_key = self.options.get("caption_column") or first_key(keys, CAPTION_KEYS)
        caption = item.get(caption_key) if caption_key else None
        if isinstance(caption, str) and caption.strip():
            record.conversations = caption_turns(caption.strip(), prompt_option(self.options.get("prompt")))
            return caption_key
        return None


def finish(pending: Pending) -> SourceRecord:
    """Wait for a record's downloads; put the bytes in its images, or the failures in its error."""
    record = pending.record
    if record.error:
        return record
    downloads: list[Download] = [f.result().verified(sha) for f, sha in zip(pending.downloads, pending.sha256)]
    failed = [d.error for d in downloads if d.error]
    if failed:
        record.error = (failed[0][0], "; ".join(message for _, message in failed))
        return record
    for ref, download in zip(record.images, downloads):
        ref.data = download.data
    return record


class RecentFetches:
    """Starts a download per URL, sharing the one still in the window when a URL repeats (lists often
    name one image on consecutive rows); holds at most `capacity` futures."""

    def __init__(self, downloader: Downloader, capacity: int):
        self.downloader, self.capacity, self.recent = downloader, capacity, OrderedDict()

    def __call__(self, url: str) -> Future:
        future = self.recent.get(url)
        if future is None:
            future = self.recent[url] = self.downloader.submit(url)
            if len(self.recent) > self.capacity:
                self.recent.popitem(last=False)
        return future


# -- rows of a list file ------------------------------------------------------------------------------
def iter_rows(path: str, start_row: int) -> Iterator[tuple[int, Any]]:
    """(row, record) of a list file from `start_row` on, streamed whatever its size."""
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        yield from iter_parquet_rows(path, start_row)
    elif lower.endswith((".csv", ".tsv")):
        yield from iter_csv_rows(path, start_row, csv_delimiter(path))
    elif lower.endswith(".txt"):
        yield from iter_txt_rows(path, start_row)
    else:
        yield from iter_json_records(path, start_row)


def iter_parquet_rows(path: str, start_row: int) -> Iterator[tuple[int, dict]]:
    for first, batch in iter_row_batches(path, parquet_metadata(path), start_row):
        yield from enumerate(batch.to_pylist(), start=first)


def csv_delimiter(path: str) -> str:
    return "\t" if path.lower().endswith(".tsv") else ","


def iter_csv_rows(path: str, start_row: int, delimiter: str) -> Iterator[tuple[int, dict]]:
    """Rows after the header, 0-based; empty cells are absent values (None)."""
    csv.field_size_limit(sys.maxsize)
    with text_input(path, newline="", encoding="utf-8-sig") as f:
        for row, values in enumerate(csv.DictReader(f, delimiter=delimiter)):
            if row >= start_row:
                yield row, {k: (v if v != "" else None) for k, v in values.items() if k is not None}


def iter_txt_rows(path: str, start_row: int) -> Iterator[tuple[int, dict]]:
    """One URL per line (img2dataset's `txt` input); rows are 0-based line numbers, blank lines skipped."""
    with text_input(path, encoding="utf-8") as f:
        for row, line in enumerate(f):
            if row >= start_row and line.strip():
                yield row, {"url": line.strip()}


def text_input(path: str, encoding: str, newline: str | None = None) -> io.TextIOWrapper:
    """The file as text, undecodable bytes kept as surrogate escapes (a local path or a URL)."""
    return io.TextIOWrapper(storage.open_input(path), encoding=encoding, errors="surrogateescape", newline=newline)


# -- helpers ------------------------------------------------------------------------------------------
def parquet_url_column(path: str, peek: int = 16) -> str | None:
    """The URL column of a parquet file without embedded images whose first `peek` values (nulls
    aside) are all http(s) URLs of images, else None (paths, web pages, an unreadable footer, ...)."""
    try:
        with parquet_source(path) as source:
            f = pq.ParquetFile(source)
            if ColumnLayout.of(f.schema_arrow).embedded:
                return None
            strings = {c.name.lower(): c.name for c in f.schema_arrow if is_string(element_type(c.type))}
            column = first_key(strings, URL_KEYS)
            if column is None or f.metadata.num_rows == 0:
                return None
            batch = next(f.iter_batches(batch_size=peek, columns=[column]))
    except (pa.ArrowException, OSError, StopIteration):
        return None
    return image_url_column(column, f.schema_arrow.names, batch.column(0).to_pylist())


def csv_url_column(path: str, peek: int = 16, head_bytes: int = 1 << 16) -> str | None:
    """The URL column of a CSV/TSV list (a header, then rows) by its first `peek` rows, as for parquet."""
    try:
        head = storage.read_head(path, head_bytes)
    except OSError:
        return None
    lines = head.decode("utf-8-sig", errors="replace").splitlines()
    if len(head) == head_bytes:
        lines = lines[:-1]  # cut short by the read
    rows = list(csv.DictReader(lines[: peek + 1], delimiter=csv_delimiter(path)))
    names = [n for n in (rows and rows[0].keys()) or [] if n is not None]
    column = first_key({n.lower(): n for n in names}, URL_KEYS)
    return image_url_column(column, names, [r.get(column) for r in rows]) if column else None


def image_url_column(column: str, names: list[str], values: list) -> str | None:
    """`column` if its `values` (nulls aside) are all http(s) URLs of images, else None."""
    urls = [u for v in values for u in as_list(v) if u]
    if not urls or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls):
        return None
    named_for_images = column.lower() != "url" or IMAGE_HINT_KEYS & {name.lower() for name in names}
    return column if named_for_images or looks_like_image_urls(urls) else None


# a plain `url` column is also what web-text dumps (C4, FineWeb, RedPajama) keep beside `text`: a list
# is taken for image URLs only with a column image-text lists carry (LAION, CC3M, COYO, DataComp,
# img2dataset) or with URLs that name image files
IMAGE_HINT_KEYS = {"caption", "txt", "alt", "width", "height", "original_width", "original_height", "similarity",
                   "punsafe", "pwatermark", "aesthetic", "clip_score", "sha256", "sha256hash", "image_phash"}
IMAGE_SUFFIXES = tuple(sorted({*EXTENSIONS.values(), ".jpeg", ".tiff"}))  # the formats' own, and common spellings


def looks_like_image_urls(urls: list[str]) -> bool:
    """At least half of `urls` end (before any query) in an image file suffix."""
    named = sum(urlsplit(u).path.lower().endswith(IMAGE_SUFFIXES) for u in urls)
    return 2 * named >= len(urls)


def first_key(keys: dict[str, str], candidates: tuple[str, ...]) -> str | None:
    """The record's own spelling of the first candidate it has (`keys`: lower-case → as written)."""
    return next((keys[c] for c in candidates if c in keys), None)


def as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def expected_hashes(value: Any, n: int) -> list[str | None]:
    """One expected sha256 per URL: a string for a one-URL record, or a list as long as the URLs."""
    values = as_list(value)
    if len(values) == n and all(v is None or isinstance(v, str) for v in values):
        return values
    return [None] * n
