"""``imapmoveproxy journal``: what an operator sees of the journal and does with an entry.

    imapmoveproxy journal [--config FILE | settings...] list [--json]
    imapmoveproxy journal [--config FILE | settings...] finish ID
    imapmoveproxy journal [--config FILE | settings...] drop ID

The journal is the one the settings name (``journal``, ``move_lock``, ``upstream``), as the
proxy would open it; it may be running meanwhile. ``list`` shows every unfinished entry (a MOVE
running right now shows as well, for as long as it runs); ``finish`` recovers the entries of
that entry's user now, as their next login would, through the master login (``rollback =
"master"``), under the mailboxes' MOVE locks (a SQLite journal is the running proxy's: stop it
first); ``drop`` removes one the operator has dealt with by hand, after which no login will
finish it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping

import trio

from .config import ConfigError, from_arguments
from .journal.entry import Entry
from .journal.store import JournalError, Stored, open_journal
from .shell.backends import backends
from .shell.journal import finish_user
from .shell.server import Proxy

USAGE = "usage: imapmoveproxy journal [--config FILE] {list [--json] | finish ID | drop ID}"
ACTIONS = ("list", "finish", "drop")


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    action = next((word for word in argv if word in ACTIONS), None)
    if action is None:
        print(USAGE, file=sys.stderr)
        return 2
    position = argv.index(action)
    settings, rest = argv[:position], argv[position + 1 :]
    as_json = "--json" in rest
    rest = [word for word in rest if word != "--json"]
    if (action != "list") != (len(rest) == 1) or (action == "list" and rest):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        config, _ = from_arguments([*settings, "--listen", "127.0.0.1:0"], environ)
    except ConfigError as exc:
        print(f"imapmoveproxy: configuration error: {exc}", file=sys.stderr)
        return 2
    journal = open_journal(config.journal_location, config.journal_fsync)
    if journal is None:
        print('imapmoveproxy: the journal is off (journal = "off")', file=sys.stderr)
        return 2
    if action == "finish":
        if config.rollback != "master":
            print('imapmoveproxy: finish needs rollback = "master"', file=sys.stderr)
            return 2
        return trio.run(_finish, Proxy(config), rest[0])
    namespaces = [
        backend.journal_namespace for backend in backends(config, tls_offered=False).values()
    ]

    async def run() -> int:
        async with journal.running():
            listed = await journal.listing(namespaces)
            if action == "drop":
                found = [namespace for namespace, (entry_id, _) in listed if entry_id == rest[0]]
                if not found:
                    print(f"imapmoveproxy: no entry {rest[0]}", file=sys.stderr)
                    return 1
                await journal.remove(found[0], rest[0])
                print(f"dropped {rest[0]}")
                return 0
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


async def _finish(proxy: Proxy, entry_id: str) -> int:
    async with proxy.locks.running(), proxy.journal.running():
        for backend in proxy.backends.values():
            entries = await proxy.journal.unfinished(backend.journal_namespace)
            entry = next((entry for entry in entries if entry.id == entry_id), None)
            if entry is not None:
                verdicts = await finish_user(proxy, backend, entry.user)
                break
        else:
            print(f"imapmoveproxy: no readable entry {entry_id}", file=sys.stderr)
            return 1
    for verdict in verdicts:
        print(f"{verdict.entry.id}: {verdict.outcome.value} {verdict.detail}".rstrip())
    return 0 if verdicts and not any(verdict.kept for verdict in verdicts) else 1
