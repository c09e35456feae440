"""Files that must never be seen half-written, nor by the wrong user."""

from __future__ import annotations

import os
import tempfile

__all__ = ["write_atomically"]


def write_atomically(
    path: str, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> None:
    """
    Write C{data} to C{path} through a temporary file beside it, synced and
    renamed over it, so a crash leaves the old file or the new one, never a
    mix.  The temporary file is created 0600 by C{mkstemp}, so a key or a
    password is never readable by others, not even for an instant.

    @param owner: the user and group ids the file should keep (a settings
        file root rewrites stays readable by the relay's group); kept only
        where this process may give them.
    """
    folder, name = os.path.split(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if owner is not None:
            try:
                os.chown(temporary, *owner)
            except PermissionError:
                pass  # not root: the file is this process's, as it must be
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
