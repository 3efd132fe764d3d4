"""A query's result as `sql`, `checks` and `stats` print it: a table, or csv/json/parquet, to stdout or a file.

Results go to this process's own stdout stream, never to a reopened /dev/stdout: reopening it
truncates a file appended to with `>>` and writes at its start (what was before is lost, NUL bytes
appear). DuckDB writes into a named pipe that a thread copies to stdout, so output streams with
bounded memory, is byte for byte what `--output FILE` writes, and `| head` simply stops it.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import tempfile
import threading

FORMATS = ["table", "csv", "json", "parquet"]
COPY_OPTIONS = {"csv": "format csv, header true", "json": "format json, array true", "parquet": "format parquet"}


def add_output_arguments(p: argparse.ArgumentParser, max_rows: int = 40) -> None:
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table (default, for reading), csv, json (an array of objects) or parquet")
    p.add_argument("--output", metavar="FILE", help="write the result to this file instead of stdout")
    p.add_argument("--max-rows", type=int, default=max_rows, help=f"rows shown in table format (default: {max_rows})")


def write_result(con, rel, args: argparse.Namespace) -> None:
    """Write relation `rel` of connection `con` as `args.format` to `args.output` or stdout."""
    with interrupted_by_ctrl_c(con):
        write_relation(con, rel, args)


def write_relation(con, rel, args: argparse.Namespace) -> None:
    if args.format == "table":
        with open_text(args.output) as out, contextlib.redirect_stdout(out):
            rel.show(max_rows=args.max_rows, max_width=250)
    elif args.output:
        con.execute(copy_statement(rel, args.format, args.output))
    else:
        if args.format == "parquet" and sys.stdout.isatty():
            raise ValueError("parquet is binary: give --output FILE or redirect stdout to a file")
        copy_to_stdout(con, rel, args.format)


@contextlib.contextmanager
def open_text(path: str | None):
    if path is None:
        yield sys.stdout
    else:
        with open(path, "w", encoding="utf-8") as f:
            yield f


def copy_statement(rel, fmt: str, path: str) -> str:
    """COPY of the relation through a view: its SQL text may end in a comment or a semicolon."""
    rel.create_view("mmlake_result", replace=True)
    quoted = "'" + path.replace("'", "''") + "'"
    return f"copy (select * from mmlake_result) to {quoted} ({COPY_OPTIONS[fmt]})"


def copy_to_stdout(con, rel, fmt: str) -> None:
    sys.stdout.flush()  # what was printed before comes first
    with tempfile.TemporaryDirectory(prefix="mmlake-out-") as tmp:
        fifo = os.path.join(tmp, "result")
        os.mkfifo(fifo)
        pump = PipeToStream(fifo, sys.stdout.buffer)
        pump.start()
        try:
            con.execute(copy_statement(rel, fmt, fifo))
        except BaseException:
            pump.finish(timeout=10)
            if pump.error is not None:  # DuckDB failed because stdout closed: that is the story
                raise pump.error from None
            raise
        pump.finish()
    if pump.error is not None:
        raise pump.error
    sys.stdout.buffer.flush()


class PipeToStream(threading.Thread):
    """Copies what is written into the named pipe `fifo` to `stream` until the writer closes it.

    If the stream fails (stdout closed by `| head`), the pipe is closed too, so the writer's next
    write fails instead of blocking; the error is kept in `error` for the caller to raise.
    """

    def __init__(self, fifo: str, stream):
        super().__init__(name="mmlake-output", daemon=True)
        self.fifo, self.stream, self.error = fifo, stream, None

    def run(self) -> None:
        try:
            with open(self.fifo, "rb") as src:
                while chunk := src.read(1 << 16):
                    self.stream.write(chunk)
        except OSError as exc:
            self.error = exc

    def finish(self, timeout: float | None = None) -> None:
        """Wait for the copy to end once the writer is done. A writer that failed (or wrote nothing)
        may never have opened the pipe, leaving this thread waiting in `open`: opening and closing
        the writing end here lets it see the end of the data."""
        try:
            os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # ENXIO: the thread has already closed its end
        self.join(timeout)


@contextlib.contextmanager
def interrupted_by_ctrl_c(con):
    """Ctrl-C stops the query running on `con`.

    While DuckDB scans the lake's Lance datasets (Python objects) it does not look at Python's
    signal flag, so Ctrl-C alone would wait for the query to end. Python's C-level handler also
    writes the signal number to a "wakeup fd"; a thread reading it interrupts the query, and the
    query's error becomes the KeyboardInterrupt it stands for.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set the wakeup fd (and receives signals)
        return
    receive, send = socket.socketpair()
    send.setblocking(False)
    previous = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
    interrupted = threading.Event()

    def watch() -> None:
        while data := receive.recv(64):
            if signal.SIGINT in data:
                interrupted.set()
                con.interrupt()

    watcher = threading.Thread(target=watch, name="mmlake-ctrl-c", daemon=True)
    watcher.start()
    try:
        yield
    except Exception:
        if interrupted.is_set():  # DuckDB's "query interrupted" error: the story is the Ctrl-C
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.set_wakeup_fd(previous)
        send.close()  # the watcher reads the end of the stream and stops
        watcher.join()
        receive.close()
