"""How a command that failed ends: one `error: ...` line on stderr and an exit code, no traceback.

User mistakes and environment problems (bad SQL, no lake, a missing file or extra, Ctrl-C) are said
in one line; anything else is a bug, said in one line too, with the way to see its traceback
(`--debug` or MMLAKE_DEBUG=1). A closed stdout (`... | head`) ends quietly, as for other Unix tools.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import threading

DEBUG_ENV = "MMLAKE_DEBUG"
USER_ERROR, FAILED, INTERRUPTED, PIPE_CLOSED = 2, 1, 130, 141  # 130/141: 128 + SIGINT/SIGPIPE, as a shell reports
EXIT_CODES = (f"0 done, {FAILED} the job failed (or part of it), {USER_ERROR} a usage or input error, "
              f"{INTERRUPTED} interrupted, {PIPE_CLOSED} stdout closed")

# top-level module of a missing import -> the extra that installs it (pyproject.toml)
EXTRAS = {"torch": "models", "torchvision": "models", "transformers": "models", "qwen_vl_utils": "models",
          "safetensors": "models", "tokenizers": "models", "ray": "ray", "lance_ray": "ray",
          "matplotlib": "notebooks", "nbclient": "notebooks", "nbformat": "notebooks"}


class CtrlC:
    """Whether Ctrl-C was pressed during the command (`seen`)."""

    seen = False


@contextlib.contextmanager
def ctrl_c_remembered():
    """Ctrl-C raises KeyboardInterrupt as usual and is remembered: DuckDB wraps a KeyboardInterrupt
    raised while it reads a Lance dataset in its own error ("... failed: KeyboardInterrupt")."""
    ctrl_c = CtrlC()
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield ctrl_c  # not ours to change (a caller's handler, or SIGINT ignored)
        return

    def handler(signum, frame):
        ctrl_c.seen = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield ctrl_c
    finally:  # after a Ctrl-C the command is ending: a late second delivery (DuckDB passes it on) is ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN if ctrl_c.seen else signal.default_int_handler)


def ended_by(exc: BaseException, ctrl_c: CtrlC | None = None) -> int:
    """Say why the command stopped (at most one line on stderr); return the exit code."""
    if is_closed_pipe(exc):
        silence_stdout()
        return PIPE_CLOSED
    if isinstance(exc, KeyboardInterrupt) or (ctrl_c and ctrl_c.seen) or is_interrupted_query(exc):
        say("interrupted")
        return INTERRUPTED
    message = user_error(exc)
    if message is not None:
        say(message)
        return USER_ERROR
    say(f"{type(exc).__name__}: {one_line(str(exc))} (an internal error; "
        f"rerun with --debug or {DEBUG_ENV}=1 to see the traceback)")
    return FAILED


def user_error(exc: BaseException) -> str | None:
    """The one-line message of an error the user can fix, None for anything else (a bug)."""
    if isinstance(exc, SystemExit):  # `raise SystemExit("message")` in job code
        return str(exc.code)
    if isinstance(exc, ModuleNotFoundError) and exc.name and not exc.name.startswith("etl"):
        top = exc.name.split(".")[0]
        extra = EXTRAS.get(top)
        hint = f": pip install 'mmlake[{extra}]'" if extra else f": pip install {top}"
        return f"this needs the Python package {top!r}, which is not installed{hint}"
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror.lower()}"
    if isinstance(exc, (OSError, ValueError)) or isinstance(exc, errors_of("duckdb", "Error")) \
            or isinstance(exc, errors_of("yaml", "YAMLError")):
        return one_line(str(exc))
    return None


def errors_of(module: str, name: str) -> tuple[type, ...]:
    """The exception class `module.name` if that module is loaded (the CLI never imports it just for this)."""
    loaded = sys.modules.get(module)
    return (getattr(loaded, name),) if loaded is not None else ()


def one_line(message: str) -> str:
    """A (DuckDB, multi-line) message as one line: its text up to the `LINE n:` source excerpt."""
    text = re.split(r"\n\s*LINE \d+:", message, maxsplit=1)[0]
    return " ".join(text.split()) or "(no message)"


def is_interrupted_query(exc: BaseException) -> bool:
    """DuckDB's own answer to Ctrl-C: while a query runs on no Python object it catches SIGINT itself
    (Python never sees it) and raises InterruptException, or in duckdb 2.0 a bare RuntimeError."""
    return isinstance(exc, errors_of("duckdb", "InterruptException")) or \
        (type(exc) is RuntimeError and str(exc) == "Query interrupted")


def is_closed_pipe(exc: BaseException) -> bool:
    return isinstance(exc, BrokenPipeError) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE)


def silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's final flush does not fail again on the closed pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a real file (e.g. captured): nothing will be flushed to a pipe


def say(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
