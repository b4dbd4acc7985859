"""The MOVE's shape (imapmoveproxy/move/state.py, move/emulation.py): one record of plain data,
step functions over it that can be run without a session, one module that moves the step, and
no import circle in move/."""

from __future__ import annotations

import ast
from pathlib import Path

from imapmoveproxy.move import listing, recovery
from imapmoveproxy.move.bookkeeping import ClientCounts, SetCheck
from imapmoveproxy.move.request import MoveRequest, Policy
from imapmoveproxy.move.state import Failure, MoveState, Outcome, Reply, Send, Step, Then
from imapmoveproxy.wire.capabilities import Capabilities
from imapmoveproxy.wire.grammar import NumberSet

MOVE = Path(__file__).resolve().parents[2] / "imapmoveproxy" / "move"


def _state(uid_set: bytes = b"1:*", chunk_limit: int = 3) -> MoveState:
    request = MoveRequest(b"m", True, uid_set, b"Archive")
    return MoveState(
        request,
        ClientCounts(None, None),
        SetCheck(request),
        chunk_limit=chunk_limit,
        caps=Capabilities(frozenset({b"UIDPLUS"})),
        policy=Policy.UIDPLUS,
    )


def test_chunks_follow_the_listed_uids_in_order_across_ranges():
    state = _state()
    state.listed, state.left = NumberSet.parse(b"1:3,7,9:12"), 8
    chunks = []
    while state.left:
        send = listing.next_chunk(state)
        assert send.step is Step.COPY and state.chunk.uids is not None
        chunks.append(list(state.chunk.uids))
        copy = b"UID COPY " + state.chunk.uids.text().encode() + b" Archive\r\n"
        assert send.commands[-1] == [copy]
    assert chunks == [[1, 2, 3], [7, 9, 10], [11, 12]]


def test_the_first_chunk_is_preceded_by_the_noop_once():
    state = _state()
    state.listed, state.left = NumberSet.parse(b"5:9"), 5
    assert listing.next_chunk(state).commands[0] == [b"NOOP\r\n"]
    assert listing.next_chunk(state).commands[0] != [b"NOOP\r\n"]


def test_a_failure_is_a_typed_value_that_names_its_step_in_the_outcome():
    state = _state()
    state.failure = Failure(Step.FLAG, b"NO", None, b"injected")
    state.chunk.moving = {10, 11}
    reply = recovery.report(state)
    assert isinstance(reply, Reply) and reply.outcome is Outcome.FAILED
    assert reply.text.startswith(b"MOVE failed (flag: injected)")
    state.outcome = reply.outcome
    assert state.outcome_name() == "flag-failed"


def test_a_chunk_done_without_failure_hands_over_to_the_next_chunk():
    state = _state()
    state.left = 2
    assert recovery.chunk_done(state) is Then.NEXT_CHUNK
    state.left = 0
    assert recovery.chunk_done(state) == Reply(Outcome.MOVED, b"OK", None, b"Move completed.")


def test_a_rollback_request_makes_the_move_wait():
    state = _state()
    state.failure = Failure(Step.EXPUNGE, b"NO", None, b"gone wrong")
    state.chunk.moving, state.chunk.remaining = {10, 11}, {11}
    state.chunk.targets, state.chunk.target_validity = {10: 20, 11: 21}, b"7"
    assert recovery.after_check(state) == Send(Step.ROLLBACK, [])
    assert state.rollback is not None and state.rollback.uids == (21,)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return found


def test_move_has_no_import_circle():
    graph = {path.stem: _imports(path) for path in MOVE.glob("*.py")}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for name in graph.get(start, ()):
            if name == goal or (name not in seen and reaches(name, goal, seen | {name})):
                return True
        return False

    assert [name for name in graph if reaches(name, name, set())] == []


def test_only_the_emulation_assigns_the_step():
    assigning = set()
    for path in MOVE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                if any(isinstance(t, ast.Attribute) and t.attr == "step" for t in names):
                    assigning.add(path.name)
    assert assigning == {"emulation.py"}
