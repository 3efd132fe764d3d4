"""The commit lock: one committer at a time, and a dead holder never blocks the lake for good."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from etl.commitlock import CommitLock, FileLock, LeaseLock, LeaseLost

from conftest import REPO

HOLD_AND_WAIT = """
import sys, time
from etl.commitlock import {backend}
lock = {backend}(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def hold_in_a_process(backend: str, root: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_AND_WAIT.format(backend=backend), root], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("backend", [FileLock, LeaseLock])
def test_a_holder_killed_with_sigkill_frees_the_lock_at_once(tmp_path, backend):
    holder = hold_in_a_process(backend.__name__, str(tmp_path))
    lock = backend(str(tmp_path))
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (lock.acquire(), got.set()), daemon=True)
    waiter.start()
    assert not got.wait(1.0), "acquired while another process held the lock"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert got.wait(10.0), "a dead holder kept the lock"
    lock.release()


@pytest.mark.parametrize("backend", [FileLock, LeaseLock])
def test_threads_of_one_process_take_turns_and_the_lock_is_reentrant(tmp_path, backend):
    lock = CommitLock(backend(str(tmp_path)))
    inside, overlaps = [0], []

    def commit_twice():
        for _ in range(5):
            with lock.held(), lock.held():  # re-entrant: a commit inside a commit group
                inside[0] += 1
                overlaps.append(inside[0])
                time.sleep(0.005)
                inside[0] -= 1

    threads = [threading.Thread(target=commit_twice) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [1] * 15


def test_an_expired_lease_of_another_host_is_taken_over_and_its_holder_stops_before_committing(tmp_path):
    stalled = LeaseLock(str(tmp_path), ttl=0.6)
    stalled.me = "elsewhere:1:x"  # a holder on another machine: only expiry frees its lease
    stalled.acquire()
    stalled.stop_renewing.set()  # it stalls: no renewals any more
    stalled.renewer.join()

    started = time.monotonic()
    taker = LeaseLock(str(tmp_path), ttl=5)
    taker.acquire()
    assert 0.3 < time.monotonic() - started < 5

    # the stalled holder wakes up: its renewal fails, and it must not commit
    assert not stalled.renew()
    with pytest.raises(LeaseLost):
        stalled.check()
    taker.release()


def test_a_lake_on_another_filesystem_uri_uses_the_lease(tmp_path, monkeypatch):
    from etl.commitlock import commit_lock

    monkeypatch.delenv("MMLAKE_COMMIT_LOCK", raising=False)
    assert isinstance(commit_lock(str(tmp_path / "a")).backend, FileLock)
    assert isinstance(commit_lock("s3://bucket/lake").backend, LeaseLock)
    monkeypatch.setenv("MMLAKE_COMMIT_LOCK", "lease")
    assert isinstance(commit_lock(str(tmp_path / "b")).backend, LeaseLock)
