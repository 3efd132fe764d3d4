"""Image references → files: a path written in a source is followed only inside the allowed roots.

A source names its images by path (`"image": "00001/x.jpg"`, HF path-only Image structs, data-juicer's
`../../tests/ops/data/img1.png`, LLaVA-NeXT's `/mnt/...`). Such a path asks this machine to read a
file, and whatever image is read is stored in the lake and may be exported and published. So a
reference is followed only into the *allowed roots*:

- every `--image-root`;
- the folder the reader says the source's paths are relative to (`ImageRef.base_dir`: the JSON
  file's folder, an HF dataset's root, VILA's image folder);
- the folder named on the command line that the source file was found under (a directory, a
  glob's fixed part; for a file named alone, its own folder): ingesting `dataset/` lets
  `dataset/annotations/a.json` point at `../images/a.jpg`, ingesting the JSON alone does not.

Lookup is unchanged (an absolute path as is; a relative one under each image root, then under
`base_dir`); containment is checked on the real path (symlinks resolved, `..` collapsed) for
relative and absolute references alike. A reference whose file exists but resolves outside every
root is an `image_outside_roots` error and the file is never opened; the message names the
`--image-root` that would allow it. `--allow-outside-roots` (`allow_outside=True`) lifts the
containment for a trusted source; `--from-hub` refuses it. Either way only regular files are read,
opened without following a last-component symlink (the checked real path is what is opened), and
never under the kernel's /proc or /sys (whose files look regular). A symlink swapped between the
check and the open is not defended against beyond that: the threat is a hostile source file, not
a hostile file system.

Roots may be URLs (`s3://bucket/images`, `hf://datasets/org/name`; see `etl.storage`): a source on
object storage names its images relative to its own folder there, or by URL. The same rules hold,
with `..` collapsed lexically (object stores have no symlinks or special files). A URL outside every
root is refused without asking its server anything (a hostile source cannot make ingest probe other
hosts), so it is `image_outside_roots` whether or not it exists.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from etl import storage
from etl.sources.base import ImageRef

OUTSIDE_ROOTS = "image_outside_roots"
KERNEL_TREES = ("/proc", "/sys")  # pseudo-files that stat as regular files (/proc/self/environ)
OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
DIR_CACHE_SIZE = 4096  # real paths of image folders: most references share a few folders
UNKNOWN = object()  # a file mode not looked up yet


class UnreadableImage(OSError):
    """A located image file that must not or cannot be read (`kind` names why)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Located:
    """Where a reference leads: a file that may be read, or the (kind, message) saying why not."""

    path: str | None = None
    error: tuple[str, str] | None = None


class ImageRoots:
    """Resolves path references to files inside the allowed roots and reads them safely.

    `image_roots` are the `--image-root` folders, `source_root` the folder the current source file
    was found under (see `for_file`); `allow_outside` lifts the containment (never the regular-file
    and kernel-tree rules).
    """

    def __init__(self, image_roots: list[str], allow_outside: bool = False, source_root: str | None = None):
        self.image_roots, self.allow_outside, self.source_root = [str(r) for r in image_roots], allow_outside, source_root
        self.real_dirs: dict[str, str] = {}
        self.fixed_roots = [self.real_dir(r) for r in [*self.image_roots, *([source_root] if source_root else [])]]

    def for_file(self, path: str, name: str) -> "ImageRoots":
        """The roots for a source file at `path` recorded as `name` (relative to its argument)."""
        return ImageRoots(self.image_roots, self.allow_outside, argument_root(path, name))

    def locate(self, ref: ImageRef) -> Located:
        """The first existing regular file for `ref` inside the roots, or why there is none."""
        if "\0" in ref.path:  # no file has such a name, and os.path.realpath raises on it
            return Located(error=("missing_image", f"image path {ref.path!r} contains a NUL byte"))
        escaped = special = None
        for candidate in self.candidates(ref):
            real, mode = self.resolved(candidate)
            if storage.is_remote(real):
                if self.allow_outside or within(real, self.allowed(ref)):
                    if storage.kind(real) == "file":  # a store that does not answer stops the run
                        return Located(real)
                elif escaped is None:
                    escaped = real
                continue
            if within(real, KERNEL_TREES):
                return Located(error=(OUTSIDE_ROOTS, f"image path {ref.path} resolves to {real}: kernel files are never read"))
            if self.allow_outside or within(real, self.allowed(ref)):
                mode = file_mode(real) if mode is UNKNOWN else mode
                if mode is not None and stat.S_ISREG(mode):
                    return Located(real)
                if special is None and mode is not None and not stat.S_ISDIR(mode):
                    special = real  # a FIFO, socket or device: never opened
            elif escaped is None and os.path.lexists(candidate):
                escaped = real
        if special:
            return Located(error=("unreadable_image", f"image path {ref.path} resolves to {special}: not a regular file"))
        if escaped:
            return Located(error=(OUTSIDE_ROOTS, f"image path {ref.path} resolves to {escaped}, outside the allowed "
                                                 f"roots {self.named_roots(ref)}; add its folder with --image-root "
                                                 "to allow it"))
        looked = [*self.image_roots, ref.base_dir] if not is_absolute(ref.path) else []
        return Located(error=("missing_image", f"image file not found: {ref.path} (looked in {looked})"))

    def named_roots(self, ref: ImageRef) -> list[str]:
        """The allowed roots as the user and the reader named them (for messages)."""
        named = [*self.image_roots, ref.base_dir, self.source_root]
        return list(dict.fromkeys(r for r in named if r))

    def candidates(self, ref: ImageRef) -> list[str]:
        """Lookup order: an absolute path (or a URL) as is; a relative one under each image root, then base_dir."""
        if is_absolute(ref.path):
            return [ref.path]
        return [storage.join(root, ref.path) for root in [*self.image_roots, ref.base_dir] if root]

    def allowed(self, ref: ImageRef) -> list[str]:
        return [*self.fixed_roots, self.real_dir(ref.base_dir)] if ref.base_dir else self.fixed_roots

    def resolved(self, path: str) -> tuple[str, int | None | object]:
        """(os.path.realpath(path), its file mode: None if nothing is there, UNKNOWN if not looked
        at); a URL with its `..` collapsed.

        One `lstat` per local file (its folder's real path is cached): what it finds is the file
        itself unless it is a symlink, which is then resolved (and its target not looked at yet)."""
        if storage.is_remote(path):
            return storage.normalize(path), UNKNOWN
        head, tail = os.path.split(path)
        if tail in ("", ".", ".."):
            return os.path.realpath(path), UNKNOWN
        joined = os.path.join(self.real_dir(head or "."), tail)
        try:
            mode = os.lstat(joined).st_mode
        except (OSError, ValueError):  # missing, or a name the OS refuses
            return joined, None
        return (os.path.realpath(joined), UNKNOWN) if stat.S_ISLNK(mode) else (joined, mode)

    def real_dir(self, folder: str) -> str:
        if storage.is_remote(folder):
            return storage.normalize(folder)
        real = self.real_dirs.get(folder)
        if real is None:
            if len(self.real_dirs) >= DIR_CACHE_SIZE:
                self.real_dirs.clear()
            real = self.real_dirs[folder] = os.path.realpath(folder)
        return real


def is_absolute(path: str) -> bool:
    return os.path.isabs(path) or storage.is_remote(path)


def file_mode(path: str) -> int | None:
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):  # missing, or a name the OS refuses (NUL byte)
        return None


def within(path: str, roots: list[str] | tuple[str, ...]) -> bool:
    """Whether the (real, absolute) `path` is one of `roots` or below one of them."""
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def argument_root(path: str, name: str) -> str:
    """The folder the file at `path` was found under: `path` minus its recorded `name`, else its folder."""
    if storage.is_remote(path):
        url = storage.normalize(path)
        return url[: -len(name) - 1] if url.endswith("/" + name) else storage.parent(url)
    path = os.path.abspath(path)
    suffix = os.sep + name.replace("/", os.sep)
    return path[: -len(suffix)] or os.sep if path.endswith(suffix) else os.path.dirname(path)


def read_regular_file(path: str) -> bytes:
    """The bytes of the regular file at `path` (a located real path); FIFOs, devices, directories and
    a last-component symlink (swapped in since the check) are refused without reading. A URL is
    read whole by one request."""
    if storage.is_remote(path):
        try:
            return storage.read_bytes(path)
        except OSError as exc:
            storage.raise_if_unreachable(path, exc)
            raise UnreadableImage("unreadable_image", f"{path}: {exc}") from None
    fd, _ = open_regular_file(path)
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read()
        except OSError as exc:
            raise UnreadableImage("unreadable_image", f"{path}: {exc.strerror or type(exc).__name__}") from None


def open_regular_file(path: str) -> tuple[int, os.stat_result]:
    """(descriptor, fstat) of the regular file at the located local `path`, opened without following
    a last-component symlink and without blocking on a FIFO; anything else is `UnreadableImage`."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as exc:
        raise UnreadableImage("unreadable_image", f"{path}: {exc.strerror or type(exc).__name__}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnreadableImage("unreadable_image", f"{path}: not a regular file")
    return fd, st
