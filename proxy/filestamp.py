"""The one way this project tells that a file changed: a stamp of what `stat` says about it.

Files the proxy re-reads (its `--config`, a Vault Agent token sink, a credentials file, an admin
token) are often mounted by Kubernetes, which updates a ConfigMap or Secret volume by writing a
new directory and swapping a `..data` symlink: the path stays, the file behind it is a new one,
and its mtime may even be older than the old file's. So the stamp follows symlinks and includes
the inode and device, not only the mtime and size::

    stamp = FileStamp.of(path)        # None while the file cannot be read
    ...
    if FileStamp.of(path) != stamp:   # changed, replaced, appeared or vanished
        ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What identifies one version of a file: modification time, size, inode and device."""

    mtime_ns: int
    size: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileStamp | None:
        """The stamp of the file `path` names (after symlinks), or None if it cannot be stat'ed."""
        try:
            return cls.stat(path)
        except OSError:
            return None

    @classmethod
    def stat(cls, path: str | os.PathLike[str]) -> FileStamp:
        """The stamp of the file `path` names (after symlinks); raises OSError as `os.stat` does."""
        stat = os.stat(path)  # follows symlinks: a swapped `..data` link shows as a new inode
        return cls(stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev)


class FileWatch:
    """Remembers a file's stamp; `changed()` says whether it differs from the one last seen."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.stamp = FileStamp.of(self.path)

    def changed(self) -> bool:
        """True (once) when the file was modified, replaced, created or removed since last seen."""
        stamp = FileStamp.of(self.path)
        if stamp == self.stamp:
            return False
        self.stamp = stamp
        return True
