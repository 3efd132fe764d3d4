"""Splitting a JSON file into records without trusting it: JSON arrays, JSONL, wrapped objects.

Each record's text is parsed on its own by the stdlib json (C speed), so one bad record costs one
record: a stretch that does not parse becomes a `BadStretch` (an `errors` kind, a message naming
its byte offset and line, its raw text) and reading goes on after it. What is accepted as it is:
`NaN`/`Infinity` (the stdlib reads them), control characters inside strings, trailing commas
(`[{...},]`, and `{"a": [1,],}` inside a record: the mistake in LLaVA's own docs), missing or
doubled commas between records. What becomes an error row:

- `invalid_utf8`: the record holds bytes that are not UTF-8 (bytes are kept as `\\xNN` in `raw`);
- `lone_surrogate`: a `\\udXXX` escape without its pair (not storable as UTF-8 text);
- `bad_json_record` (array element) / `bad_json_line` (JSONL line): does not parse;
- `truncated_json`: the file ends inside the record (or before the array's `]`);
- `too_deeply_nested`: nested deeper than `MAX_DEPTH` levels (Python's own encoders recurse);
- `record_too_large`: longer than `max_record_bytes` (in an array: characters of text, which is
  bytes for `json.dump`'s ASCII output); skipped by a streaming scan that keeps its first
  `RAW_LIMIT` characters, so memory stays bounded whatever the file holds.

Record numbers (the `row` of each item) depend only on the file's bytes and `max_record_bytes`, so
a resumed read (`start_row`) continues exactly where a previous one stopped.
"""
from __future__ import annotations

import codecs
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

CHUNK = 1 << 20  # bytes read at a time
MAX_RECORD_BYTES = 32 << 20  # a longer record is an error row (default of `max_record_mb`)
RAW_LIMIT = 1 << 16  # characters of a bad record kept in its error row
PIN_LIMIT = 4096  # the longest separator between records 0 and 1 learnt as the record boundary
MAX_DEPTH = 128  # LLaVA/messages records nest 3-5 levels; json.dumps recurses once per level
BOM = "\ufeff"

WHITESPACE = re.compile(r"[ \t\r\n]*")
SEPARATORS = re.compile(r"[ \t\r\n,]*")
SURROGATE_ESCAPE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)
PAIRLESS_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a surrogate escape: fine in a pair only
STRUCTURE = re.compile(r'["{}\[\],]')
STRING_STOP = re.compile(r'["\\\n]')  # a raw newline ends a string while resynchronising
TRAILING_COMMA = re.compile(r'("[^"\\]*(?:\\.[^"\\]*)*")|,(\s*[\]}])', re.S)
DECODER = json.JSONDecoder(strict=False)  # control characters in strings are kept as written


@dataclass
class BadStretch:
    """A stretch of the file that is not a usable record: lands in `errors` with its raw text."""

    kind: str
    message: str
    raw: str


class TextWindow:
    """The file's text from the read position on, decoded from UTF-8 chunk by chunk.

    Bytes that are not UTF-8 become surrogate escapes (U+DC80..U+DCFF), so a record holding them
    is found and named, not fatal; `dirty` says the window may hold some. `pos` is the read
    position in `text`; text before it is dropped when more is read. `byte_at`/`line_at` turn an
    index into the file's byte offset and 1-based line (for messages; computed on demand).
    """

    def __init__(self, f: BinaryIO, chunk: int = CHUNK):
        self.f, self.chunk = f, chunk
        self.text, self.pos = "", 0
        self.base_byte, self.base_line = 0, 1  # of text[0]
        self.nbytes, self.undecoded = 0, b""  # bytes of `text`; bytes read but not decoded yet
        self.eof = self.dirty = False
        self.pinned: int | None = None  # text from here on is kept (see `drop`)
        self.more()
        if self.text.startswith(BOM):
            self.text, self.base_byte, self.nbytes = self.text[1:], 3, self.nbytes - 3

    def more(self, at_least: int = 0) -> bool:
        """Drop the text before `pos`, append at least a chunk (or `at_least` bytes); False at EOF."""
        if self.eof:
            return False
        self.drop()
        new = ""
        while not new and not self.eof:  # (a chunk may end inside a character: read on)
            data = self.f.read(max(self.chunk, at_least))
            self.eof, data = not data, self.undecoded + data
            try:
                new, used = codecs.utf_8_decode(data, "strict", self.eof)
            except UnicodeDecodeError:
                new, used = codecs.utf_8_decode(data, "surrogateescape", self.eof)
                self.dirty = True
            self.undecoded, self.nbytes = data[used:], self.nbytes + used
        self.text = self.text + new if self.text else new
        return bool(new)

    def drop(self) -> None:
        """Forget the text before `pos` (or before `pinned`, while it is within PIN_LIMIT of `pos`)."""
        if self.pinned is not None and self.pos - self.pinned > PIN_LIMIT:
            self.pinned = None
        cut = self.pos if self.pinned is None else self.pinned
        if not cut:
            return
        rest = self.text[cut:]  # (usually the start of one record: cheap to measure)
        rest_bytes = len(rest) if rest.isascii() else len(rest.encode("utf-8", "surrogateescape"))
        self.base_byte, self.base_line = self.base_byte + self.nbytes - rest_bytes, self.line_at(cut)
        self.text, self.pos, self.nbytes = rest, self.pos - cut, rest_bytes
        self.pinned = None if self.pinned is None else 0
        if self.dirty and not SURROGATE_ESCAPE.search(self.text):
            self.dirty = False

    def byte_at(self, i: int) -> int:
        if self.text.isascii():  # O(1): CPython keeps an ASCII flag
            return self.base_byte + i
        return self.base_byte + len(self.text[:i].encode("utf-8", "surrogateescape"))

    def line_at(self, i: int) -> int:
        return self.base_line + self.text.count("\n", 0, i)

    def where(self, i: int) -> str:
        return f"byte {self.byte_at(i)} (line {self.line_at(i)})"

    def skip(self, pattern: re.Pattern = WHITESPACE) -> str:
        """Move `pos` past what `pattern` matches; the next character, "" at the end of the file."""
        while True:
            self.pos = pattern.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def peek_after(self, i: int) -> str:
        """The first non-whitespace character after index `i` (>= pos), without moving `pos`."""
        while True:
            j = WHITESPACE.match(self.text, i + 1).end()
            if j < len(self.text):
                return self.text[j]
            ahead = i - self.pos
            if not self.more():
                return ""
            i = self.pos + ahead


@dataclass
class Stretch:
    """Where a scanned value lies: its start and end in the file, whether it closed, its raw text."""

    where: str  # "byte B (line L)" of its start
    nbytes: int
    closed: bool  # False: the file ended inside it
    raw: str


class RecordSplitter:
    """Yields `(row, record or BadStretch)` from a `TextWindow`, rows numbered from 0 in file order."""

    def __init__(self, window: TextWindow, max_record_bytes: int = MAX_RECORD_BYTES):
        self.win, self.max_record_bytes = window, max_record_bytes
        # (separator, opening): the text between records 0 and 1 and the opening of a good record 0:
        # `, ` + `{"id": `, or `,\n  ` + `{\n    "id": ` pretty-printed; where a record starts, to
        # resynchronise after a bad one
        self.boundary: tuple[str, str] | None = None
        self.start = -1  # where the value just parsed starts in the window (-1: it was not parsed whole)


    # -- layouts ------------------------------------------------------------------------------------
    def array_items(self, start_row: int = 0, whole_file: bool = True) -> Iterator[tuple[int, Any]]:
        """The elements of the array whose `[` is at `pos` (and, for a `whole_file` array, one more
        row for any text after its `]`)."""
        win, row, opening, separators = self.win, 0, None, SEPARATORS.match
        win.pos += 1
        while True:
            if row == 1:
                win.pinned = win.pos  # keep the separator after record 0
            win.pos = separators(win.text, win.pos).end()
            c = win.text[win.pos] if win.pos < len(win.text) else win.skip(SEPARATORS)
            pinned, win.pinned = win.pinned, None
            if c == "]":
                win.pos += 1
                break
            if c == "":
                if row >= start_row:
                    after = f"after record {row - 1}" if row else "before its first record"
                    yield row, BadStretch("truncated_json", f"the file ends (at byte {win.byte_at(win.pos)}) {after} "
                                          "without closing the array (no `]`): it may have been cut", "")
                return
            if row == 1 and opening and pinned is not None and win.pos - pinned <= PIN_LIMIT:
                self.boundary = (win.text[pinned:win.pos], opening)
            item = self.quick_value()
            if item is NOTHING:
                item = self.next_value(want=row >= start_row)
                if isinstance(item, BadStretch) and item.kind == "truncated_json":
                    yield from [(row, item)] if row >= start_row else []
                    return
            if row == 0 and self.start >= 0 and not isinstance(item, BadStretch) \
                    and (m := FIRST_KEY.match(win.text, self.start, win.pos)):
                opening = m.group()
            if row >= start_row:
                yield row, item
            row += 1
        if whole_file and win.skip() and row >= start_row:
            yield row, self.trailing()

    def object_items(self, start_row: int = 0) -> Iterator[tuple[int, Any]]:
        """The records of the first key holding a list of objects (`{"annotations": [{...}]}`).

        An object with no such list is returned as the one record of the file (row 0): a single
        record written on its own, whose `conversations`/`messages` lists are its turns.
        """
        win = self.win
        win.pos += 1
        while win.skip(SEPARATORS) == '"':
            key = self.next_value(want=True)
            if win.skip() != ":":
                break
            win.pos += 1
            if win.skip() == "[" and win.peek_after(win.pos) == "{" and key not in RECORD_LISTS:
                yield from self.array_items(start_row, whole_file=False)
                return
            self.scan(win.pos)  # a value before the list: skipped without keeping it
        self.win = win = restart(win)
        win.skip()
        item = self.next_value(want=start_row == 0)
        rows = [item] if isinstance(item, BadStretch) or not win.skip() else [item, self.trailing()]
        yield from ((row, it) for row, it in enumerate(rows) if row >= start_row)

    def keyed_items(self, start_row: int = 0) -> Iterator[tuple[int, Any]]:
        """The members of the object whose `{` is at `pos` as `(key, value)`, rows in file order
        (OCR-VQA's `dataset.json`: records keyed by their id). A value that does not parse is a
        BadStretch and reading goes on after it; a member without a quoted key and `:` ends the file."""
        win, row = self.win, 0
        win.pos += 1
        while (c := win.skip(SEPARATORS)) != "}":
            key = self.next_value(want=True) if c == '"' else None
            if not isinstance(key, str) or win.skip() != ":":
                if row >= start_row:
                    yield row, self.bad(win.pos, "bad_json_record", "expected a quoted key followed by `:`")
                return
            win.pos += 1
            win.skip()
            value = self.next_value(want=row >= start_row)
            if row >= start_row:
                yield row, value if isinstance(value, BadStretch) else (key, value)
            if isinstance(value, BadStretch) and value.kind == "truncated_json":
                return
            row += 1
        win.pos += 1
        if win.skip() and row >= start_row:
            yield row, self.trailing()

    def trailing(self) -> BadStretch:
        s = self.win.pos
        stretch = self.scan(s, until_eof=True)
        return BadStretch("bad_json_record", f"text after the end of the JSON value at {stretch.where}",
                          raw_text(stretch.raw, stretch.nbytes))

    # -- one value ----------------------------------------------------------------------------------
    def quick_value(self) -> Any:
        """The value at `pos` if it lies whole in the window and every check passes at a glance
        (the common case, kept short: this runs once per record), else NOTHING."""
        win = self.win
        text, s = win.text, win.pos
        try:
            value, end = DECODER.raw_decode(text, s)
        except (ValueError, RecursionError):
            return NOTHING
        if end == len(text) or end - s > self.max_record_bytes or win.dirty \
                or (text.find("\\u", s, end) >= 0 and PAIRLESS_ESCAPE.search(text, s, end)) \
                or text.count("{", s, end) + text.count("[", s, end) > MAX_DEPTH:
            return NOTHING
        self.start, win.pos = s, end
        return value

    def next_value(self, want: bool) -> Any:
        """Parse the value at `pos` and move past it: the value, or a BadStretch covering it.

        The window grows until the value is complete or longer than `max_record_bytes`. Unless
        `want`, a value that parses is not checked (rows before `start_row` only need their end).
        """
        win, self.start = self.win, -1
        while True:
            s = win.pos
            try:
                value, end = DECODER.raw_decode(win.text, s)
            except json.JSONDecodeError as exc:
                if may_continue(exc, win.text) and not win.eof:
                    if len(win.text) - s < self.max_record_bytes:
                        win.more(at_least=len(win.text) - s)
                        continue
                    return self.bad(s, "record_too_large", f"longer than {self.max_record_bytes} bytes")
                return self.unparsed(s, exc, want)
            except RecursionError:
                return self.bad(s, "too_deeply_nested", f"nested deeper than {MAX_DEPTH} levels")
            except ValueError as exc:  # e.g. an integer of more than 4300 digits
                return self.bad(s, "bad_json_record", str(exc))
            if end == len(win.text) and not win.eof and win.more():
                continue  # a number or literal may go on in the next chunk
            self.start, win.pos = s, end
            if end - s > self.max_record_bytes:  # it came whole in one read
                nbytes = win.byte_at(end) - win.byte_at(s)
                return BadStretch("record_too_large", f"record at {win.where(s)}: {self.too_large(nbytes)}",
                                  raw_text(win.text[s:s + RAW_LIMIT], nbytes))
            if not want:
                return value
            problem = value_problem(value, win.text, s, end, win.dirty)
            if problem is None:
                return value
            kind, reason, at = problem
            at = f" (at {win.where(s + at)})" if at else ""
            return BadStretch(kind, f"record at {win.where(s)}: {reason}{at}", raw_text(win.text[s:end]))

    def unparsed(self, s: int, exc: json.JSONDecodeError, want: bool) -> Any:
        """A value the parser refused: its stretch, parsed once more without trailing commas."""
        win = self.win
        where, error_at = win.where(s), win.where(exc.pos)
        stretch = self.resync(s, exc.pos) or self.scan(win.pos, keep=self.max_record_bytes)  # (pos: s, moved)
        if stretch.closed and stretch.nbytes <= self.max_record_bytes and "," in stretch.raw:
            try:
                value = DECODER.decode(TRAILING_COMMA.sub(lambda m: m.group(1) or m.group(2), stretch.raw))
            except (ValueError, RecursionError):
                pass
            else:
                problem = value_problem(value, stretch.raw, 0, len(stretch.raw), True) if want else None
                if problem is None:
                    return value
                return BadStretch(problem[0], f"record at {where}: {problem[1]}", raw_text(stretch.raw))
        if not stretch.closed:
            return truncated(stretch)
        return BadStretch("bad_json_record", f"record at {where} does not parse: {exc.msg}: {error_at}",
                          raw_text(stretch.raw, stretch.nbytes))

    def bad(self, s: int, kind: str, reason: str) -> BadStretch:
        stretch = self.scan(s)
        if not stretch.closed:
            return truncated(stretch)
        if kind == "record_too_large":
            reason = self.too_large(stretch.nbytes)
        return BadStretch(kind, f"record at {stretch.where}: {reason}", raw_text(stretch.raw, stretch.nbytes))

    def too_large(self, nbytes: int) -> str:
        return f"{nbytes} bytes, over the limit of {self.max_record_bytes} (option max_record_mb)"

    # -- resynchronising ----------------------------------------------------------------------------
    def resync(self, s: int, error: int) -> Stretch | None:
        """The stretch from `s` to the next record boundary (as learnt) after the parse `error`.

        The parser read valid JSON up to `error`, so no boundary lies before it; searching from
        there finds where the next record starts even when a stray quote or a missing bracket
        breaks the structure (a one-line 1 GB array has no newline to stop at).
        """
        if self.boundary is None:
            return None
        win, (separator, opening) = self.win, self.boundary
        pattern = separator + opening
        at, limit = max(s + 1, error - len(pattern)), self.max_record_bytes + len(pattern)
        while (j := win.text.find(pattern, at, s + limit)) < 0:  # (a bounded search: rows never
            if win.eof or len(win.text) - s >= limit:                # depend on how much was read)
                return None
            at, s = max(0, len(win.text) - len(pattern) - s), 0  # (`more` drops the text before s)
            win.more(at_least=len(win.text) - win.pos)
        where, nbytes = win.where(s), win.byte_at(j) - win.byte_at(s)
        raw, win.pos = win.text[s:j], j
        return Stretch(where, nbytes, True, raw)

    def scan(self, s: int, keep: int = RAW_LIMIT, until_eof: bool = False) -> Stretch:
        """Move `pos` past the value starting at `s` by its structure alone (strings, brackets).

        The value ends where its brackets balance, or before a `,`/`]`/`}` outside any bracket
        (`until_eof`: at the end of the file). Reading streams: only the first `keep` characters
        are kept, so a 1 GB record costs no more memory than a small one. A raw newline ends a
        string here (JSON strings hold none), so one stray quote cannot swallow the rest of a
        pretty-printed file.
        """
        win = self.win
        win.pos, where, first_byte = s, win.where(s), win.byte_at(s)
        kept, nkept, depth, in_string, escaped = [], 0, 0, False, False
        i = s
        while True:
            text, end = win.text, None
            if escaped and i < len(text):
                i, escaped = i + 1, False
            while end is None and not escaped:
                m = (STRING_STOP if in_string else STRUCTURE).search(text, i)
                if m is None:
                    break
                c, i = m.group(), m.end()
                if in_string:
                    in_string = c == "\\"
                    escaped = in_string and i == len(text)
                    i += in_string and not escaped
                elif c == '"':
                    in_string = True
                elif c in "{[":
                    depth += 1
                elif until_eof:
                    continue
                elif depth == 0:  # `,` or a closer outside the value: it ends before it (and its blanks)
                    end = m.start() if m.start() > s or kept else i  # (a stray closer alone: itself)
                    while end > max(s, win.pos) + 1 and text[end - 1] in " \t\r\n":
                        end -= 1
                else:
                    depth -= c != ","
                    end = i if depth == 0 else None
            stop = len(text) if end is None else end
            if nkept < keep:
                kept.append(text[win.pos:min(stop, win.pos + keep - nkept)])
                nkept += len(kept[-1])
            win.pos = stop
            if end is not None:
                return Stretch(where, win.byte_at(end) - first_byte, True, "".join(kept))
            if not win.more():
                return Stretch(where, win.byte_at(len(win.text)) - first_byte, until_eof, "".join(kept))
            i = s = 0


NOTHING = object()  # no value (None is a JSON value)
RECORD_LISTS = ("conversations", "messages")  # lists of objects that are a record's own turns
FIRST_KEY = re.compile(r'\{\s*"(?:[^"\\]|\\.){0,200}"\s*:\s*')


def restart(win: TextWindow) -> TextWindow:
    """A new window at the start of the same file."""
    win.f.seek(0)
    return TextWindow(win.f, win.chunk)


def may_continue(exc: json.JSONDecodeError, text: str) -> bool:
    """The parser stopped at the end of the text it had: more text may complete the value."""
    return exc.pos >= len(text) - 16 or exc.msg.startswith("Unterminated string")


def value_problem(value: Any, text: str, s: int, end: int, dirty: bool) -> tuple[str, str, int] | None:
    """Why a value that parsed cannot be stored: (kind, reason, index in text - s), or None.

    Each check is a C-speed search of the record's text first; the Python walk runs only when
    it finds something (a record with many brackets, a surrogate escape).
    """
    if dirty and (m := SURROGATE_ESCAPE.search(text, s, end)):
        return "invalid_utf8", f"byte 0x{ord(m.group()) - 0xDC00:02x} is not UTF-8", m.start() - s
    if text.count("{", s, end) + text.count("[", s, end) > MAX_DEPTH and nesting_depth(value) > MAX_DEPTH:
        return "too_deeply_nested", f"nested deeper than {MAX_DEPTH} levels", 0
    if (m := PAIRLESS_ESCAPE.search(text, s, end)) and not storable_text(value):
        return "lone_surrogate", "a \\udXXX escape without its pair (not storable as UTF-8)", m.start() - s
    return None


def nesting_depth(value: Any) -> int:
    """How many list/object levels `value` has (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def storable_text(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def raw_text(text: str, nbytes: int | None = None) -> str:
    """`text` (of `nbytes` bytes in the file) as storable UTF-8, non-UTF-8 bytes as `\\xNN`, cut to
    RAW_LIMIT characters with a note saying so."""
    if nbytes is None:
        nbytes = len(text.encode("utf-8", "surrogateescape"))
    whole = len(text) <= RAW_LIMIT and nbytes <= len(text.encode("utf-8", "surrogateescape"))
    text = text[:RAW_LIMIT]
    if SURROGATE_ESCAPE.search(text):
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text if whole else text + f"\n[... cut: the first {len(text)} characters of {nbytes} bytes]"


def truncated(stretch: Stretch) -> BadStretch:
    return BadStretch("truncated_json", f"the file ends inside the record that starts at {stretch.where} "
                      f"({stretch.nbytes} bytes read): it was cut", raw_text(stretch.raw, stretch.nbytes))


def jsonl_items(f: BinaryIO, start_row: int = 0,
                max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[tuple[int, Any]]:
    """(row, record or BadStretch) of a JSONL file: rows are 0-based line numbers, blank lines skipped.

    A line is read with a bound (`max_record_bytes`): a longer one is skipped chunk by chunk and
    becomes one `record_too_large` row, so a 1 GB line never sits in memory.
    """
    offset = 0
    for row in itertools.count():
        line = f.readline(max_record_bytes + 1)
        if not line:
            return
        start, offset = offset, offset + len(line)
        too_long = len(line) > max_record_bytes and not line.endswith(b"\n")
        if too_long:
            head, rest = line[:RAW_LIMIT], line
            while rest and not rest.endswith(b"\n"):
                rest = f.readline(CHUNK)
                offset += len(rest)
        if row < start_row or line.isspace():
            continue
        where = f"line {row + 1} (byte {start})"
        if too_long:
            nbytes = offset - start - rest.endswith(b"\n")
            yield row, BadStretch("record_too_large", f"{where}: {nbytes} bytes, over the limit of "
                                  f"{max_record_bytes} (max_record_mb)",
                                  raw_text(head.decode("utf-8", "surrogateescape"), nbytes))
        else:
            yield row, jsonl_value(line.removeprefix(codecs.BOM_UTF8) if row == 0 else line, where, start)


def jsonl_value(line: bytes, where: str, start: int) -> Any:
    """One JSONL line parsed, or the BadStretch saying why it cannot be."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadStretch("invalid_utf8", f"{where}: byte {start + exc.start} (0x{line[exc.start]:02x}) is not UTF-8",
                          raw_text(line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")))
    try:
        value = DECODER.decode(text)
    except json.JSONDecodeError as exc:
        cut = not line.endswith(b"\n") and may_continue(exc, text.rstrip())
        kind, note = ("truncated_json", ": the file ends inside this line (it was cut)") if cut else ("bad_json_line", "")
        return BadStretch(kind, f"{where}: {exc.msg}: column {exc.colno}{note}", raw_text(text.rstrip("\r\n")))
    except RecursionError:
        return BadStretch("too_deeply_nested", f"{where}: nested deeper than Python's recursion limit",
                          raw_text(text.rstrip("\r\n")))
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return BadStretch("bad_json_line", f"{where}: {exc}", raw_text(text.rstrip("\r\n")))
    problem = value_problem(value, text, 0, len(text), False)
    if problem is None:
        return value
    return BadStretch(problem[0], f"{where}: {problem[1]}", raw_text(text.rstrip("\r\n")))
