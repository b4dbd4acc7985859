"""``imapmoveproxy journal``: what an operator sees of the journal and does with an entry.

    imapmoveproxy journal [--config FILE | settings...] list [--json]
    imapmoveproxy journal [--config FILE | settings...] drop ID

The journal is the one the settings name (``journal``, ``move_lock``, ``upstream``), as the
proxy would open it; it may be running meanwhile. ``list`` shows every unfinished entry (a MOVE
running right now shows as well, for as long as it runs); ``drop`` removes one the operator has
dealt with by hand, after which no login will finish it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping

import trio

from ..config import ConfigError, from_arguments
from .entry import Entry
from .store import JournalError, Stored, open_journal

USAGE = "usage: imapmoveproxy journal [--config FILE] {list [--json] | drop ID}"


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    action = next((word for word in argv if word in ("list", "drop")), None)
    if action is None:
        print(USAGE, file=sys.stderr)
        return 2
    position = argv.index(action)
    settings, rest = argv[:position], argv[position + 1 :]
    as_json = "--json" in rest
    rest = [word for word in rest if word != "--json"]
    if (action == "drop") != (len(rest) == 1) or (action == "list" and rest):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        config, _ = from_arguments([*settings, "--listen", "127.0.0.1:0"], environ)
    except ConfigError as exc:
        print(f"imapmoveproxy: configuration error: {exc}", file=sys.stderr)
        return 2
    journal = open_journal(config.journal_location, str(config.upstream))
    if journal is None:
        print('imapmoveproxy: the journal is off (journal = "off")', file=sys.stderr)
        return 2

    async def run() -> int:
        async with journal.running():
            if action == "drop":
                await journal.remove(rest[0])
                print(f"dropped {rest[0]}")
                return 0
            listed = await journal.listing()
        print(_json(listed) if as_json else _table(listed))
        return 0

    try:
        return trio.run(run)
    except JournalError as exc:
        print(f"imapmoveproxy: {exc}", file=sys.stderr)
        return 1


def _json(listed: list[tuple[str, Stored]]) -> str:
    rows = []
    for upstream, (entry_id, entry) in listed:
        if isinstance(entry, Entry):
            rows.append({"upstream": upstream, **entry.describe()})
        else:
            rows.append({"upstream": upstream, "id": entry_id, "unreadable": str(entry)})
    return json.dumps(rows, indent=2)


def _table(listed: list[tuple[str, Stored]]) -> str:
    if not listed:
        return "no unfinished MOVEs"
    lines = []
    now = time.time()
    for upstream, (entry_id, entry) in listed:
        if not isinstance(entry, Entry):
            lines.append(f"{entry_id}  {upstream}  unreadable: {entry}")
            continue
        age = int(now - entry.created)
        lines.append(
            f"{entry_id}  {upstream}  {entry.user.decode('latin-1')}  "
            f"{entry.source.decode('latin-1')} -> {entry.target.decode('latin-1')}  "
            f"{len(entry.uids)} messages  {entry.phase.value}  {age}s old"
        )
    return "\n".join(lines)
