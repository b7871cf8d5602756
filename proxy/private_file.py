"""Writing files that hold secrets or state: mode 0600 from the first byte, and never
seen half-written.

The data goes to a temporary file beside the target (created 0600 and exclusive),
is flushed to disk, and then takes the target's name: ``os.replace`` (the old file
or the whole new one, whatever happens) or, when an existing file must win,
``os.link`` (two processes writing at once end up with the first one's file). The
directory is synced last, so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["sync_directory", "write_private"]

_PRIVATE = 0o600


def write_private(
    path: Path, data: bytes, *, replace: bool = True, owner: tuple[int, int] | None = None
) -> bool:
    """Write ``data`` to ``path`` as described above; True if it now holds ``data``.

    ``replace=False``: an existing file is kept (False is returned), even one created
    between the caller's check and now. ``owner``: (uid, gid) to give the file when
    permitted (a root-run command keeping a service user's file theirs); still 0600.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _PRIVATE)
    try:
        with os.fdopen(fd, "wb") as out:
            # The umask may have taken bits from open()'s mode; say it exactly.
            os.fchmod(out.fileno(), _PRIVATE)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(out.fileno(), *owner)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
            written = True
        else:
            try:
                os.link(tmp, path)
                written = True
            except FileExistsError:
                written = False
    finally:
        tmp.unlink(missing_ok=True)
    sync_directory(path.parent)
    return written


def sync_directory(directory: Path) -> None:
    """fsync a directory (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
