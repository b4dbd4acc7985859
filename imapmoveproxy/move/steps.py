"""The steps of an emulated MOVE, named in logs and metrics, and the flag commands they send."""

from __future__ import annotations

import enum


class Step(enum.Enum):
    CAPABILITY = "capability"  # learning the upstream's capabilities after authentication
    FORWARD = "forward"  # the client's MOVE sent to the upstream as it is
    RIGHTS = "rights"  # MYRIGHTS on the source, if not known yet (ACL)
    PREFETCH = "prefetch"  # a MOVE too big for one chunk: which UIDs to move, before copying
    COPY = "copy"
    FIND_SYNC = "find-sync"  # guarded: NOOP, so the search below sees other sessions' flags
    FIND_DELETED = "find-deleted"  # guarded: which other messages carry \Deleted
    FLAG = "flag"  # flag the moved messages (guarded: and unflag the others)
    RECHECK_SYNC = "recheck-sync"  # guarded: NOOP again
    RECHECK = "recheck"  # guarded: has another session flagged a message since?
    EXPUNGE = "expunge"
    RESTORE = "restore"  # guarded: put \Deleted back where it was
    VERIFY = "verify"  # guarded: which moved messages are still there after EXPUNGE
    UNDO = "undo"  # guarded, after a failure: unflag what we flagged, restore the others
    UNFLAG = "unflag"  # UIDPLUS, after a failure: clear the \\Deleted flags the proxy set
    CHECK = "check"  # UIDPLUS, after a failure: which moved messages are still in the source
    ROLLBACK = "rollback"  # waiting for a second session to remove their copies from the target
    COPY_FLAGS = "copy-flags"  # guarded: waiting for a second session to restore the copies' flags
    DONE = "done"


FLAG = b"UID STORE %s +FLAGS.SILENT (\\Deleted)\r\n"
UNFLAG = b"UID STORE %s -FLAGS.SILENT (\\Deleted)\r\n"
