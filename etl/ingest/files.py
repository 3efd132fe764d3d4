"""Image files → bytes in Arrow buffers: a batch's located files read ahead by the kernel, copied once.

Each file is opened exactly as `etl.imagerefs.read_regular_file` opens one (its checked real path,
no last-component symlink, never blocking on a FIFO, refused unless `fstat` says regular file) and
read straight into a large Arrow buffer shared by the batch's files. No Python `bytes` is made per
image and the rows of `images` are a slice or `take` of that buffer (`images.blob_bytes`), so each
image's bytes are copied once from the page cache, into memory the allocator reuses batch after
batch (a never-touched page costs several times a reused one on a VM).

Cold files are read in parallel by the kernel, not by threads: every file is opened and announced
with POSIX_FADV_WILLNEED up to `AHEAD_FILES` files / `AHEAD_BYTES` before it is read, which keeps
the disk's queue full from one thread. (Eight threads each blocking in `read` reached the same
throughput for twice the CPU, most of it in GIL hand-offs: 85 futex calls per image.)
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from etl.imagerefs import UnreadableImage, open_regular_file

AHEAD_FILES = 256  # files opened and announced before they are read (each holds a descriptor) ...
AHEAD_BYTES = 128 << 20  # ... and at most this much announced and not read yet
SEGMENT_BYTES = 16 << 20  # files are packed into buffers of this size (a bigger file gets its own)


@dataclass
class FileRead:
    """One file's bytes (`data`, viewing row `row` of segment `segment`), or why it has none."""

    data: memoryview | bytes | None = None
    segment: int | None = None  # None: `data` is its own bytes (a file that grew while read)
    row: int = 0
    error: tuple[str, str] | None = None  # (kind, message)
    stamp: tuple[int, int] | None = None  # (size, mtime_ns) by fstat when it was opened


class FileReader:
    """Reads files into segments (Arrow buffers of `SEGMENT_BYTES`), in order, reading ahead.

    `read(paths)` yields one `FileRead` per path as soon as it is read; `arrays()` then gives each
    segment as a large_binary array whose row `FileRead.row` holds that file's bytes.
    """

    def __init__(self, segment_bytes: int | None = None):
        self.segment_bytes = segment_bytes or SEGMENT_BYTES
        self.buffers: list[pa.Buffer] = []
        self.views: list[memoryview] = []  # the segments as writable unsigned bytes
        self.offsets: list[list[int]] = []  # per segment: row starts, then the end of the last row
        self.free = 0  # bytes left in the last segment

    def read(self, paths: list[str]) -> Iterator[FileRead]:
        most_open = files_open_ahead()
        ahead: deque[tuple[int | None, os.stat_result | None, tuple[str, str] | None]] = deque()  # (fd, fstat, error)
        ahead_bytes, opened = 0, 0
        try:
            for path in paths:
                while opened < len(paths) and (not ahead or (len(ahead) < most_open and ahead_bytes < AHEAD_BYTES)):
                    ahead.append(announce(paths[opened]))
                    ahead_bytes += size_of(ahead[-1][1])
                    opened += 1
                fd, st, error = ahead.popleft()
                ahead_bytes -= size_of(st)
                if error:
                    yield FileRead(error=error)
                    continue
                try:
                    read = self.read_open(fd, st.st_size, path)
                finally:
                    os.close(fd)
                read.stamp = (st.st_size, st.st_mtime_ns)
                yield read
        finally:  # a consumer that stops early: close what was opened ahead
            for fd, _, _ in ahead:
                if fd is not None:
                    os.close(fd)

    def read_open(self, fd: int, size: int, path: str) -> FileRead:
        """The bytes of the open file `fd` (`size` by fstat) into the current segment."""
        if size > self.free or not self.buffers:  # (an empty first file needs a segment too)
            self.new_segment(size)
        segment, start = len(self.buffers) - 1, self.offsets[-1][-1]
        view = self.views[-1][start: start + size]
        spare = bytearray(1)  # filled only when the file grew since fstat
        got = 0
        try:
            while got < size:
                n = os.readv(fd, [view[got:], spare])
                if n == 0:
                    break
                got += n
                if got > size:  # the file grew: read the rest, keep these bytes apart
                    return FileRead(data=bytes(view) + spare + read_rest(fd))
        except OSError as exc:
            return FileRead(error=("unreadable_image", f"{path}: {exc.strerror or type(exc).__name__}"))
        self.offsets[-1].append(start + got)
        self.free -= got
        return FileRead(data=view[:got], segment=segment, row=len(self.offsets[-1]) - 2)

    def new_segment(self, size: int) -> None:
        capacity = max(self.segment_bytes, size)
        self.buffers.append(pa.allocate_buffer(capacity))
        self.views.append(memoryview(self.buffers[-1]).cast("B"))  # Arrow exports signed chars
        self.offsets.append([0])
        self.free = capacity

    def arrays(self) -> list[pa.Array]:
        """Each segment as a large_binary array (no copy: the array's data buffer is the segment)."""
        return [pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1,
                                      [None, pa.array(offsets, pa.int64()).buffers()[1], buffer])
                for buffer, offsets in zip(self.buffers, self.offsets)]


def announce(path: str) -> tuple[int | None, os.stat_result | None, tuple[str, str] | None]:
    """Open the located file `path` as `read_regular_file` does and ask the kernel to start reading
    it: (descriptor, fstat, None), or (None, None, (kind, message)) when it must not or cannot be read."""
    try:
        fd, st = open_regular_file(path)
    except UnreadableImage as exc:
        return None, None, (exc.kind, str(exc))
    try:
        os.posix_fadvise(fd, 0, st.st_size, os.POSIX_FADV_WILLNEED)
    except (AttributeError, OSError):  # only a hint (no such call here, or a file system without it)
        pass
    return fd, st, None


def size_of(st: os.stat_result | None) -> int:
    return st.st_size if st is not None else 0


def announce_files(paths: list[str], max_bytes: int = AHEAD_BYTES) -> None:
    """Ask the kernel to start reading the located files `paths` (their first `max_bytes` in all),
    which the next batch will read: its reads then find them cached."""
    for path in paths:
        fd, st, _ = announce(path)
        if fd is not None:
            os.close(fd)
            max_bytes -= st.st_size
            if max_bytes <= 0:
                return


def files_open_ahead() -> int:
    """AHEAD_FILES, or a quarter of the descriptors this process may open if that is fewer."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 16
    return max(1, min(AHEAD_FILES, soft // 4)) if soft != resource.RLIM_INFINITY else AHEAD_FILES


def read_rest(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
