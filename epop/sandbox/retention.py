"""
How many uploads the sandbox keeps, so that a long demo or rehearsal does
not fill the disk: the newest ones, up to a number or a total size; the
oldest go first, and the upload just received always stays.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from twisted.logger import Logger
from twisted.python.filepath import FilePath

from epop.messages import Text, log_format, system_reason
from epop.sandbox.uploads import RECEIPT_NAME

__all__ = ["DEFAULT_KEEP", "Keep", "parse_keep"]

#: What the sandbox keeps unless told otherwise.
DEFAULT_KEEP = "500M"

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

log = Logger()


@dataclass(frozen=True)
class Keep:
    """At most C{uploads} uploads, or at most C{size} bytes of them; neither: all."""

    uploads: int | None = None
    size: int | None = None

    def prune(self, folder: FilePath, language: str = "en") -> list[str]:
        """
        Delete the oldest complete uploads of C{folder} beyond the limit
        (never the newest); returns the ids deleted, oldest first.  Uploads
        still arriving (hidden C{.ID.partial} folders) are not counted.
        What it logs is in C{language}, the sandbox's.
        """
        if self.uploads is None and self.size is None:
            return []
        try:
            names = sorted(name for name in os.listdir(folder.path) if not name.startswith("."))
        except FileNotFoundError:
            return []
        uploads = [folder.child(name) for name in names if folder.child(name).isdir()]
        sizes = [_size(upload) for upload in uploads]
        deleted: list[str] = []
        while len(uploads) > 1 and self._over(len(uploads), sum(sizes)):
            oldest = uploads.pop(0)
            sizes.pop(0)
            try:
                oldest.remove()
            except OSError as e:
                log.warn(
                    log_format(Text("Could not delete the old upload {path}: {why}"), language),
                    path=oldest.path,
                    why=system_reason(e).render(language),
                )
                break
            deleted.append(oldest.basename())
        if deleted:
            log.info(
                log_format(Text("Deleted {count} old upload(s) to keep {limit}: {ids}"), language),
                count=len(deleted),
                limit=self.describe(language),
                ids=", ".join(deleted),
            )
        return deleted

    def _over(self, count: int, size: int) -> bool:
        return (self.uploads is not None and count > self.uploads) or (
            self.size is not None and size > self.size
        )

    def describe(self, language: str = "en") -> str:
        """What is kept, for people, in C{language}."""
        if self.uploads is not None:
            return Text("the newest {count} upload(s)", count=self.uploads).render(language)
        if self.size is not None:
            return Text("at most {size} of uploads", size=_binary_size(self.size, language)).render(language)
        return Text("every upload").render(language)


def _binary_size(size: int, language: str) -> str:
    """C{size} as C{--keep} took it, 500 MiB rather than 524288000 bytes."""
    for suffix, unit in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if suffix and size % unit == 0:
            return Text("{count} {prefix}iB", count=size // unit, prefix=suffix).render(language)
    return Text("{size} bytes", size=size).render(language)


def _size(upload: FilePath) -> int:
    """The bytes uploaded into C{upload}: its files, not the sandbox's receipt."""
    total = 0
    for entry in os.scandir(upload.path):
        if entry.name == RECEIPT_NAME:
            continue
        try:
            total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass
    return total


def parse_keep(text: str) -> Keep:
    """
    Read C{--keep}: a number of uploads (C{20}), a size (C{500M}, C{2G},
    C{800K}, powers of 1024), or C{all}.

    @raise ValueError: for anything else, saying what is expected.
    """
    value = text.strip()
    if value.lower() == "all":
        return Keep()
    if value.isdigit() and int(value) > 0:
        return Keep(uploads=int(value))
    match = re.fullmatch(r"(\d+)([KMG])", value, re.IGNORECASE)
    if match is None or int(match[1]) == 0:
        raise ValueError(
            Text("expected a number of uploads (20), a size (500M, 2G) or 'all', not {value}", value=repr(text))
        )
    return Keep(size=int(match[1]) * _UNITS[match[2].upper()])
