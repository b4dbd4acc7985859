"""What the session knows of the selected mailbox."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SelectedMailbox:
    """The mailbox selected on the client's connection, as far as a MOVE needs it."""

    name: bytes | None = None  # as SELECT named it (None: not known, e.g. given as a literal)
    read_only: bool = False  # opened with EXAMINE (READ-ONLY)
    uidvalidity: bytes = b""  # keys the MOVE lock
    exists: int | None = None  # messages in it, as the upstream announced them (EXISTS, EXPUNGE)
    recent: int | None = None  # the RECENT count the client was last shown
    rights: bytes | None = None  # MYRIGHTS on it, once learned

    def selected(self, name: bytes | None) -> None:
        """A SELECT, EXAMINE, CLOSE or UNSELECT completed (``name``: what is selected now)."""
        self.name = name
        self.rights = None

    def expunged(self, count: int) -> None:
        """``count`` EXPUNGE responses were relayed."""
        if self.exists is not None:
            self.exists = max(0, self.exists - count)
