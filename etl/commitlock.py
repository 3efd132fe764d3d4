"""The lake's commit lock: one writer at a time between "which keys are new?" and "commit them".

Lance commits are atomic and retry compatible conflicts by themselves, but two appends never
conflict: two writers that both find image X new both append it, and the lake holds X twice. What
must be atomic is the key check *and* the commit, across tables (images, errors, samples, then the
checkpoint). Every mmlake command therefore commits inside `CommitLock.held()`: whoever holds it
sees every commit made before, and nobody commits until it lets go. Work (reading, hashing, writing
fragments) happens outside the lock, so concurrent commands still overlap everywhere but the commit.

Two backends, one contract (`acquire` blocks until held; a holder that dies releases it):

- `FileLock` (a lake on a local or network filesystem): `flock` on `<lake>/_mmlake/commit.lock`.
  The kernel releases it when the holder dies, kill -9 included.
- `LeaseLock` (any lake URI, object stores included): a lease in the Lance config of
  `<lake>/_mmlake/commit_lease.lance`. Taking or renewing it is a Lance `UpdateConfig` commit of the
  same key, and two such commits conflict (Lance detects it with a conditional put on S3, an atomic
  rename locally), so it is a compare-and-swap. The holder renews it every `ttl / 4` on a thread; a
  lease whose holder died is taken over when it expires (at once when the holder was a process of
  this host that no longer exists). A holder that lost its lease (paused past the ttl) stops with
  `LeaseLost` before its next commit instead of committing beside the new holder.

`MMLAKE_COMMIT_LOCK=file|lease` forces a backend (tests run the concurrency suite with both).
"""
from __future__ import annotations

import os
import random
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator, Protocol

LOCK_DIR = "_mmlake"
ENV_BACKEND = "MMLAKE_COMMIT_LOCK"
WAIT_NOTICE_SECONDS = 10.0  # say who holds the lock when waiting longer than this


class LeaseLost(RuntimeError):
    """This process's commit lease expired and another writer took it: stop before committing."""


class LockBackend(Protocol):
    def acquire(self) -> None: ...
    def release(self) -> None: ...
    def check(self) -> None: ...


def is_local(root: str) -> bool:
    return "://" not in root or root.startswith("file://")


class FileLock:
    """`flock` on a file in the lake folder: released by the kernel when the holder dies."""

    def __init__(self, root: str):
        self.path = os.path.join(root.removeprefix("file://"), LOCK_DIR, "commit.lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = time.monotonic()
            print_waiting(f"another process is committing to this lake ({self.path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
            if time.monotonic() - waited > WAIT_NOTICE_SECONDS:
                print("mmlake: got the lake's commit lock", file=sys.stderr)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def check(self) -> None:
        """A kernel lock cannot be lost while its descriptor is open."""


def print_waiting(why: str) -> None:
    if os.environ.get("MMLAKE_QUIET_LOCK") != "1":
        print(f"mmlake: waiting: {why}", file=sys.stderr)


class LeaseLock:
    """A lease in a Lance dataset's config, taken and renewed by conflicting `UpdateConfig` commits."""

    HOLDER, EXPIRES = "mmlake.lease.holder", "mmlake.lease.expires"

    def __init__(self, root: str, ttl: float = 60.0, poll: float = 0.05):
        self.uri = f"{root.rstrip('/')}/{LOCK_DIR}/commit_lease.lance"
        self.ttl, self.poll = ttl, poll
        self.me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.version: int | None = None  # the lease dataset's version holding our lease
        self.lost = False
        self.stop_renewing = threading.Event()
        self.renewer: threading.Thread | None = None
        self.state_lock = threading.Lock()

    # -- the compare-and-swap --------------------------------------------------------------------
    def dataset(self):
        import lance
        import pyarrow as pa

        try:
            return lance.dataset(self.uri)
        except (ValueError, FileNotFoundError, OSError):
            try:
                return lance.write_dataset(pa.table({"lease": pa.array([], pa.int8())}), self.uri, mode="create")
            except (ValueError, OSError):  # created by another process meanwhile
                return lance.dataset(self.uri)

    def swap(self, read_version: int, holder: str, expires: float) -> int | None:
        """Set the lease if nobody changed it since `read_version`: the new version, or None."""
        import lance
        from lance import LanceOperation as Op
        from lance.commit import CommitConflictError

        update = Op.UpdateConfig(config_updates=Op.UpdateMap(
            updates={self.HOLDER: holder, self.EXPIRES: f"{expires:.3f}"}, replace=False))
        try:
            return lance.LanceDataset.commit(self.uri, update, read_version=read_version, max_retries=0).version
        except CommitConflictError:  # two UpdateConfig commits of one key: the later one loses
            return None

    # -- the contract ------------------------------------------------------------------------------
    def acquire(self) -> None:
        noticed = False
        started = time.monotonic()
        while True:
            ds = self.dataset()
            config = ds.config()
            holder, expires = config.get(self.HOLDER, ""), float(config.get(self.EXPIRES, "0") or 0)
            if not holder or expires < time.time() or holder_is_dead(holder):
                version = self.swap(ds.version, self.me, time.time() + self.ttl)
                if version is not None:
                    with self.state_lock:
                        self.version, self.lost = version, False
                    self.start_renewing()
                    return
            elif not noticed and time.monotonic() - started > WAIT_NOTICE_SECONDS:
                print_waiting(f"the lake's commit lease is held by {holder}")
                noticed = True
            time.sleep(self.poll * (1 + random.random()))

    def release(self) -> None:
        self.stop_renewing.set()
        if self.renewer is not None:
            self.renewer.join()
        with self.state_lock:
            version, self.version = self.version, None
        if version is not None and not self.lost:
            self.swap(version, "", 0.0)  # if it fails, the lease was taken over already

    def check(self) -> None:
        """Raise `LeaseLost` when the lease lapsed: the caller must not commit."""
        with self.state_lock:
            if self.lost or self.version is None:
                raise LeaseLost("the lake's commit lease expired while this command held it "
                                "(stalled longer than its ttl); nothing more was committed: rerun the command")

    def start_renewing(self) -> None:
        self.stop_renewing = threading.Event()
        self.renewer = threading.Thread(target=self.renew_until_released, daemon=True, name="mmlake-lease")
        self.renewer.start()

    def renew_until_released(self) -> None:
        while not self.stop_renewing.wait(self.ttl / 4) and self.renew():
            pass

    def renew(self) -> bool:
        """Extend the lease; False (and `lost`) when another writer took it since."""
        with self.state_lock:
            if self.version is None:
                return False
            version = self.swap(self.version, self.me, time.time() + self.ttl)
            if version is None:
                self.lost = True
                return False
            self.version = version
            return True


def holder_is_dead(holder: str) -> bool:
    """A holder on this host whose process is gone (kill -9) frees the lease at once."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class CommitLock:
    """Re-entrant in a process (threads take turns), exclusive across processes and machines."""

    def __init__(self, backend: LockBackend):
        self.backend = backend
        self.rlock = threading.RLock()
        self.depth = 0

    @contextmanager
    def held(self) -> Iterator[None]:
        with self.rlock:
            if self.depth == 0:
                self.backend.acquire()
            self.depth += 1
            try:
                self.backend.check()
                yield
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.backend.release()

    def check(self) -> None:
        self.backend.check()


_LOCKS: dict[str, CommitLock] = {}
_LOCKS_GUARD = threading.Lock()


def commit_lock(root: str) -> CommitLock:
    """The process-wide lock of the lake at `root` (every `Lake` object of that root shares it)."""
    backend = os.environ.get(ENV_BACKEND) or ("file" if is_local(root) else "lease")
    key = f"{backend}:{os.path.abspath(root) if '://' not in root else root}"
    with _LOCKS_GUARD:
        if key not in _LOCKS:
            _LOCKS[key] = CommitLock(FileLock(root) if backend == "file" else LeaseLock(root))
        return _LOCKS[key]
