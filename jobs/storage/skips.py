"""What a listing left out, and why: ``ListingStats`` counts the entries a folder walk
could not list (unreadable folders, symlink loops, special files, names that are not
UTF-8), so that a caller can report them instead of losing them silently.

    python -c "from jobs import storage; s = storage.ListingStats(); print(len(list(storage.list_objects('.', stats=s))), s.summary())"
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

EXAMPLES_PER_REASON = 3


class ListingSkipWarning(UserWarning):
    """A listing without a ListingStats skipped entries (the warning says which)."""


@dataclass
class ListingStats:
    """Entries a listing skipped: reason -> count, and a few escaped names per reason."""

    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, path: str) -> None:
        self.skipped[reason] += 1
        names = self.examples.setdefault(reason, [])
        if len(names) < EXAMPLES_PER_REASON:
            names.append(shown_name(path))

    @property
    def total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line: ``skipped 3 entries: 2 symlink loop (e.g. '/x/a.jpg'), 1 ...``."""
        parts = [f"{n} {reason} (e.g. {', '.join(self.examples[reason])})" for reason, n in self.skipped.most_common()]
        return f"skipped {self.total} entries: " + "; ".join(parts) if parts else "skipped nothing"


def shown_name(path: str) -> str:
    """``path`` safe to print and to store as UTF-8: bytes that are not UTF-8 (file
    names are bytes) as ``\\xff``, control and invisible characters as escapes, quoted."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return repr(text)
