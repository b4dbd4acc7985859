"""What a MOVE keeps of the client's view (imapmoveproxy/move/bookkeeping.py): the counts it
has been told, EXISTS and RECENT held back from the COPY on, and the one EXISTS that must go
out before an EXPUNGE naming a message the client was never told of."""

from __future__ import annotations

from imapmoveproxy.move.bookkeeping import ClientCounts


def test_counts_before_the_copy_go_to_the_client_at_once() -> None:
    counts = ClientCounts(exists=2, recent=0)
    assert counts.count(3, exists=True, copying=False)
    assert counts.count(1, exists=False, copying=False)
    assert counts.held() == b""
    assert counts.before_expunge(3) == b""  # the client was told of 3


def test_from_the_copy_on_the_latest_exists_waits_for_the_end() -> None:
    counts = ClientCounts(exists=5, recent=2)
    assert not counts.count(6, exists=True, copying=True)  # a copy into the mailbox itself
    assert not counts.count(2, exists=False, copying=True)  # RECENT unchanged
    counts.shown_expunges(1)  # then the moved message's EXPUNGE
    assert counts.held() == b"* 5 EXISTS\r\n"  # the count that follows the EXPUNGE


def test_an_expunge_of_a_message_never_announced_gets_its_exists_first() -> None:
    """The client saw 2 EXISTS; new mail came; ``UID MOVE 1:*`` copied all three. The third
    message's EXISTS, held back from the COPY on, goes out before an EXPUNGE names it."""
    counts = ClientCounts(exists=2, recent=0)
    assert not counts.count(3, exists=True, copying=True)
    assert counts.before_expunge(1) == b""
    counts.shown_expunges(1)
    assert counts.before_expunge(1) == b""
    counts.shown_expunges(1)
    assert counts.before_expunge(1) == b"* 1 EXISTS\r\n"  # told 0 left, one more exists
    counts.shown_expunges(1)
    assert counts.held() == b""  # shown already: not repeated at the end


def test_an_expunge_numbered_past_the_count_told_releases_the_exists_at_once() -> None:
    counts = ClientCounts(exists=2, recent=None)
    assert not counts.count(3, exists=True, copying=True)
    assert counts.before_expunge(3) == b"* 3 EXISTS\r\n"
    counts.shown_expunges(1)
    assert counts.before_expunge(2) == b""


def test_recent_never_counts_more_messages_than_exist() -> None:
    counts = ClientCounts(exists=3, recent=0)
    assert not counts.count(5, exists=False, copying=True)
    assert counts.held() == b"* 3 RECENT\r\n"
