"""Launchers for real IMAP servers on 127.0.0.1, used by the test-suite.

Three implementations are supported:

* Dovecot 2.3 (``dovecot-imapd``), in two variants:

  - ``legacy``: ``imap_capability`` is Dovecot's default post-login list minus ``MOVE``
    (UIDPLUS, CONDSTORE, QRESYNC, ... are still advertised).  Note that Dovecot still
    *implements* MOVE, it just does not advertise it: use :meth:`DovecotServer.received_bytes`
    to prove that a ``MOVE`` command never reached it.
  - ``native``: the default capability list (MOVE advertised).

  :class:`DovecotAclServer` is the legacy variant plus the ACL and quota plugins (rights and
  quota limits settable per user by the test, see its docstring) and a master user.

  Authentication is ``passdb static``: any user name works with :attr:`ImapServer.password`,
  so every test can use a fresh, isolated mailbox tree (:meth:`ImapServer.new_user`).
  Mail is stored as the unprivileged ``nobody`` user in a maildir under ``<root>/home/<user>``.
  The raw client->server traffic of every post-login IMAP session is recorded with Dovecot's
  ``rawlog_dir`` setting.

* GNU Mailutils ``imap4d`` (``mailutils-imap4d``): no MOVE, no UIDPLUS.  Users are "virtual
  domain" users (``virtdomain`` authorization + ``generic`` crypt(3) authentication) stored in
  a passwd-format file ``<root>/virtdomain/test``; user names therefore look like
  ``u1a2b3c4@test``.  New users are added to that file on the fly.  Mailboxes are mbox files
  in ``<root>/home/<user>``.  imap4d's session transcript (``C:``/``S:`` lines) goes to its
  log file.

* UW-IMAP imapd 2007f (:class:`UwImapServer`, UIDPLUS, no MOVE), built once from
  ``../shared/servers/uw-imap-2007f.tar.gz`` (or ``$UW_IMAP_TARBALL``) into
  ``build/uw-imap-2007f`` (mbox, UW's default format) or ``build/uw-imap-2007f-mix`` (built
  with mix as the format of new mailboxes) and served by ``socat``.
  Users are real Unix users (``useradd``/``userdel``), homes under ``<root>/home``; the INBOX
  spool of the mbox variant is ``build/uw-imap-2007f/spool`` (compiled in).  Raw client
  traffic of every connection is recorded by a relaying ``socat -r``.

Everything (config, pid, sockets, logs, mail) lives below a caller supplied directory; nothing
touches the system configuration or ``/run/dovecot``.  The servers must be started as root
(Dovecot needs to switch to ``dovenull``/``dovecot``/``nobody``).

Typical use::

    with DovecotServer(tmp_dir, variant="legacy") as server:
        user = server.new_user()
        server.seed(user, "INBOX", [make_message("hello")])
        imap = server.connect(user)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import email.utils
import errno
import fcntl
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal, Self

HOST = "127.0.0.1"
DEFAULT_PASSWORD = "imap-test-secret"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PORT_ATTEMPTS = 5

# Dovecot 2.3.19 built-in post-login capability string (CAPABILITY_STRING).  With the default
# (empty) imap_capability Dovecot appends "LITERAL+" and, with mailbox list indexes enabled
# (the default), "NOTIFY" itself; with an explicit imap_capability it appends neither, so the
# legacy list spells them out.
DOVECOT_DEFAULT_CAPABILITY = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
    "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
    "STATUS=SIZE SAVEDATE"
)
DOVECOT_LEGACY_CAPABILITY = " ".join(
    [cap for cap in DOVECOT_DEFAULT_CAPABILITY.split() if cap != "MOVE"] + ["LITERAL+", "NOTIFY"]
)

# Unix socket paths must fit in sun_path (108 bytes); Dovecot's longest socket name below
# base_dir is "login/imap-urlauth" / "imap-urlauth-worker" (~20 bytes).
_MAX_BASE_DIR_LEN = 80

# crypt(3) SHA-512 hash of DEFAULT_PASSWORD (``openssl passwd -6 -salt imapmoveproxy ...``),
# precomputed so that we need neither the deprecated ``crypt`` module nor openssl at run time.
_IMAP4D_PASSWORD_HASH = (
    "$6$imapmoveproxy$nmfxTtCrFcuU6JDr2Sp4NQAvoOK5pJpPXMoYqBYtuYsgJ1r1EoRzlq0t6/lzPEbbhZ5KWCV/"
    "OA12Eyld1393r1"
)

_RAWLOG_TIMESTAMP = re.compile(rb"^\d+\.\d{6} ", re.MULTILINE)
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """A test IMAP server could not be started (or misbehaved)."""


class ServerNotInstalled(ServerError):
    """The server binary (or a system user it needs) is missing."""


def find_free_port(host: str = HOST) -> int:
    """Return a TCP port that was free a moment ago (the caller must retry on EADDRINUSE)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary(name: str) -> str:
    """Locate ``name`` in $PATH or the sbin directories, or raise ServerNotInstalled."""
    path = os.environ.get("PATH", "")
    found = shutil.which(name, path=os.pathsep.join([path, *_SBIN_DIRS]))
    if found is None:
        raise ServerNotInstalled(f"{name!r} not found in $PATH or {', '.join(_SBIN_DIRS)}")
    return found


def make_traversable(path: Path) -> None:
    """Add o+x to ``path`` and its ancestors we own, so unprivileged daemons can reach it.

    pytest creates its base temp directory with mode 0700; the mail user (``nobody``) and
    Dovecot's internal users must be able to traverse it.
    """
    euid = os.geteuid()
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == euid and not st.st_mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def make_message(
    subject: str,
    body: str = "Hello.\r\n",
    *,
    sender: str = "sender@example.com",
    to: str = "rcpt@example.com",
) -> bytes:
    """Build a small RFC 5322 message (with From/Date/Message-ID, CRLF line endings)."""
    headers = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(localtime=False)}",
        f"Message-ID: <{uuid.uuid4().hex}@imapmoveproxy.test>",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def quote_mailbox(name: str) -> str:
    """Quote a mailbox name as an IMAP quoted string (imaplib does not do it)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Ask the kernel to SIGTERM the server if the test process dies (Linux only)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class ImapServer:
    """Common part: process lifecycle, readiness polling, users, seeding."""

    kind: ClassVar[str] = "imap"

    def __init__(self, root: Path, *, name: str, password: str = DEFAULT_PASSWORD) -> None:
        self.root = Path(root).resolve()
        self.name = name
        self.host = HOST
        self.port = 0
        self.password = password
        self.log_path = self.root / "server.log"
        self.stdout_path = self.root / "stdout.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._user_counter = 0
        self._lock = threading.Lock()
        mail_user = self._mail_user()
        self.mail_uid = mail_user.pw_uid
        self.mail_gid = mail_user.pw_gid

    # -- to be provided by subclasses -------------------------------------------------------

    def _prepare(self) -> None:
        """Create directories (once)."""
        raise NotImplementedError

    def _write_config(self) -> None:
        """(Re)write the configuration for ``self.port``."""
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _greeting_ok(self, greeting: bytes) -> bool:
        return greeting.startswith(b"* OK")

    def _add_user(self, user: str) -> None:
        """Make ``user`` able to log in with ``self.password`` (if needed)."""

    def _user_name(self, local: str) -> str:
        return local

    def received_bytes(self, user: str | None = None) -> bytes:
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------------------

    @staticmethod
    def _mail_user() -> pwd.struct_passwd:
        try:
            return pwd.getpwnam("nobody")
        except KeyError:
            raise ServerNotInstalled("system user 'nobody' does not exist") from None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> Self:
        if self.proc is not None:
            raise ServerError(f"{self.name}: already started")
        if os.geteuid() != 0:
            raise ServerError(f"{self.name}: the test IMAP servers must be started as root")
        self.root.mkdir(parents=True, exist_ok=True)
        make_traversable(self.root)
        self._prepare()
        errors: list[str] = []
        try:
            for _attempt in range(PORT_ATTEMPTS):
                self.port = find_free_port(self.host)
                self._write_config()
                outcome = self._spawn_and_wait()
                if outcome == "ready":
                    _RUNNING.add(self)
                    return self
                errors.append(outcome)
                if outcome != "port-in-use":
                    break
        except BaseException:
            self.stop()
            raise
        raise ServerError(
            f"{self.name}: could not start ({'; '.join(errors)}).\n"
            f"--- {self.stdout_path} ---\n{_tail(self.stdout_path)}\n"
            f"--- {self.log_path} ---\n{_tail(self.log_path)}"
        )

    def _spawn_and_wait(self) -> str:
        cmd = self._command()
        offsets = {path: _size(path) for path in (self.stdout_path, self.log_path)}
        preexec = _set_pdeathsig if threading.current_thread() is threading.main_thread() else None
        with self.stdout_path.open("ab") as out:
            out.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
                preexec_fn=preexec,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._kill()  # reap leftovers of its process group, if any
                text = "".join(_read_from(path, offset) for path, offset in offsets.items())
                if "Address already in use" in text:
                    return "port-in-use"
                return "server exited during startup"
            if self._probe() and _owns_listener(self.proc.pid, self.host, self.port):
                return "ready"
            time.sleep(0.05)
        self._kill()
        return f"not ready after {START_TIMEOUT:.0f} s"

    def _probe(self) -> bool:
        try:
            with socket.create_connection(self.address, timeout=1.0) as sock:
                sock.settimeout(2.0)
                greeting = b""
                while not greeting.endswith(b"\n") and len(greeting) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    greeting += chunk
                with contextlib.suppress(OSError):
                    sock.sendall(b"z LOGOUT\r\n")
                return self._greeting_ok(greeting)
        except OSError:
            return False

    def _kill(self) -> None:
        proc = self.proc
        self.proc = None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session=True: the server leads its own process group
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
        # Children (imap, imap-login, imap4d session processes...) may linger: kill the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """Stop the server and every process of its process group.  Idempotent."""
        _RUNNING.discard(self)
        self._kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.host}:{self.port}>"

    # -- users and mail -------------------------------------------------------------------------

    def new_user(self, prefix: str = "u") -> str:
        """Return a fresh user name (own, empty mailboxes) that logs in with ``password``."""
        with self._lock:
            self._user_counter += 1
            local = f"{prefix}{self._user_counter}x{uuid.uuid4().hex[:8]}"
            user = self._user_name(local)
            self._add_user(user)
        return user

    def add_user(self, user: str) -> None:
        """Make ``user``, a name another server's :meth:`new_user` gave, a user of this one too
        (a user migrated between servers)."""
        self._add_user(user)

    def connect(self, user: str | None = None, *, timeout: float = 10.0) -> imaplib.IMAP4:
        """Return an imaplib connection, logged in as ``user`` (or not logged in if None)."""
        imap = imaplib.IMAP4(self.host, self.port, timeout=timeout)
        if user is not None:
            try:
                imap.login(user, self.password)
            except BaseException:
                with contextlib.suppress(Exception):
                    imap.shutdown()
                raise
        return imap

    def seed(
        self,
        user: str,
        mailbox: str,
        messages: Iterable[bytes],
        *,
        flags: Sequence[str] = (),
    ) -> int:
        """APPEND ``messages`` to ``mailbox`` (created if needed); return its message count."""
        imap = self.connect(user)
        try:
            if mailbox.upper() != "INBOX":
                typ, data = imap.create(quote_mailbox(mailbox))
                if typ != "OK" and not _already_exists(data):
                    raise ServerError(f"CREATE {mailbox!r} failed: {typ} {data!r}")
            flag_list = "(" + " ".join(flags) + ")" if flags else None
            for message in messages:
                # Always pass an internal date: imap4d refuses an APPEND without one when the
                # message has no From: header ("NO APPEND [TRYCREATE] failed").
                date = imaplib.Time2Internaldate(time.time())
                typ, data = imap.append(quote_mailbox(mailbox), flag_list, date, message)
                if typ != "OK":
                    raise ServerError(f"APPEND to {mailbox!r} failed: {typ} {data!r}")
            typ, data = imap.status(quote_mailbox(mailbox), "(MESSAGES)")
            if typ != "OK" or not data or not isinstance(data[0], bytes):
                raise ServerError(f"STATUS {mailbox!r} failed: {typ} {data!r}")
            match = re.search(rb"MESSAGES (\d+)", data[0])
            if match is None:
                raise ServerError(f"unexpected STATUS reply {data!r}")
            return int(match.group(1))
        finally:
            with contextlib.suppress(Exception):
                imap.logout()

    def capabilities(self, user: str | None = None) -> tuple[list[str], list[str]]:
        """Return (pre-login, post-login) CAPABILITY lists (logs in as a new user if None)."""
        imap = self.connect()
        try:
            pre = [c.upper() for c in imap.capabilities]
            imap.login(user or self.new_user(), self.password)
            typ, data = imap.capability()
            if typ != "OK" or not data or not isinstance(data[0], bytes):
                raise ServerError(f"CAPABILITY failed: {typ} {data!r}")
            post = data[0].decode().upper().split()
            return pre, post
        finally:
            with contextlib.suppress(Exception):
                imap.logout()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class DovecotServer(ImapServer):
    """A private Dovecot 2.3 instance (``legacy`` = no MOVE advertised, ``native`` = MOVE)."""

    kind = "dovecot"

    def __init__(
        self,
        root: Path,
        *,
        variant: Literal["legacy", "native"] = "native",
        name: str | None = None,
        password: str = DEFAULT_PASSWORD,
        extra_config: str = "",
    ) -> None:
        super().__init__(root, name=name or f"dovecot-{variant}", password=password)
        if variant not in ("legacy", "native"):
            raise ValueError(f"unknown Dovecot variant {variant!r}")
        self.variant = variant
        self.extra_config = extra_config
        self.config_path = self.root / "dovecot.conf"
        self.home_dir = self.root / "home"
        self.state_dir = self.root / "state"
        self.base_dir = self.root / "run"
        self._short_base_dir: str | None = None
        for user in ("dovenull", "dovecot"):
            try:
                pwd.getpwnam(user)
            except KeyError:
                raise ServerNotInstalled(
                    f"system user {user!r} missing: is dovecot-imapd installed? (make test)"
                ) from None

    def _prepare(self) -> None:
        if len(str(self.base_dir)) > _MAX_BASE_DIR_LEN:
            if self._short_base_dir is None:
                self._short_base_dir = tempfile.mkdtemp(prefix="imp-dovecot-")
            self.base_dir = Path(self._short_base_dir)
        for directory in (self.state_dir, self.base_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.home_dir.mkdir(exist_ok=True)
        os.chown(self.home_dir, self.mail_uid, self.mail_gid)
        self.home_dir.chmod(0o755)
        make_traversable(self.base_dir)

    def _command(self) -> list[str]:
        return [find_binary("dovecot"), "-F", "-c", str(self.config_path)]

    def _greeting_ok(self, greeting: bytes) -> bool:
        return greeting.startswith(b"* OK") and self._greeting_text().encode() in greeting

    def _greeting_text(self) -> str:
        return f"imapmoveproxy-test {self.name} ready."

    def _capability_setting(self) -> str:
        if self.variant == "legacy":
            return f"imap_capability = {DOVECOT_LEGACY_CAPABILITY}"
        return "# imap_capability: Dovecot default (MOVE advertised)"

    def _auth_config(self) -> str:
        """The passdb/userdb blocks (subclasses may put others before these)."""
        return f"""passdb {{
  driver = static
  args = password={self.password}
}}
userdb {{
  driver = static
  args = uid={self.mail_uid} gid={self.mail_gid} home={self.home_dir}/%u
}}"""

    def _plugins_config(self) -> str:
        """Plugin settings (none here)."""
        return ""

    def _write_config(self) -> None:
        capability = self._capability_setting()
        log = self.log_path
        self.config_path.write_text(
            f"""# Generated by tests/servers.py for {self.name}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
instance_name = imapmoveproxy-{self.name}-{self.port}
protocols = imap
listen = {self.host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
# No delay after failed logins (and no anvil auth penalty below): keeps negative tests fast.
auth_failure_delay = 0
log_path = {log}
info_log_path = {log}
debug_log_path = {log}
login_greeting = {self._greeting_text()}
default_login_user = dovenull
default_internal_user = dovecot
default_internal_group = dovecot
default_process_limit = 500
default_client_limit = 2000
first_valid_uid = {self.mail_uid}
last_valid_uid = {self.mail_uid}
first_valid_gid = {self.mail_gid}
last_valid_gid = {self.mail_gid}
mail_location = maildir:~/Maildir
mail_fsync = never
# Raw IMAP traffic (post-login) of every session, if the directory exists (see new_user()).
rawlog_dir = %h/rawlog
{capability}

{self._auth_config()}
namespace inbox {{
  inbox = yes
  separator = /
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
{self._plugins_config()}
{self.extra_config}
"""
        )

    def _add_user(self, user: str) -> None:
        # passdb/userdb are static: any name works.  Pre-create home and rawlog directory
        # (Dovecot only writes rawlogs into an existing directory).
        home = self.home_dir / user
        rawlog = home / "rawlog"
        rawlog.mkdir(parents=True)
        for directory in (home, rawlog):
            os.chown(directory, self.mail_uid, self.mail_gid)
            directory.chmod(0o700)

    def rawlog_files(self, user: str | None = None) -> list[Path]:
        pattern = f"{user}/rawlog/*.in" if user is not None else "*/rawlog/*.in"
        return sorted(self.home_dir.glob(pattern), key=lambda p: (p.stat().st_mtime, p.name))

    def received_bytes(self, user: str | None = None) -> bytes:
        """All bytes clients sent after LOGIN (rawlog ``*.in``), timestamps stripped.

        Only sessions of users created by :meth:`new_user` are recorded; pre-login traffic
        (CAPABILITY, LOGIN, AUTHENTICATE, STARTTLS...) is handled by imap-login and never
        recorded.  With ``user`` only that user's sessions are returned.
        """
        return b"".join(
            _RAWLOG_TIMESTAMP.sub(b"", path.read_bytes()) for path in self.rawlog_files(user)
        )

    def stop(self) -> None:
        super().stop()
        if self._short_base_dir is not None:
            shutil.rmtree(self._short_base_dir, ignore_errors=True)
            self._short_base_dir = None


class DovecotAclServer(DovecotServer):
    """Legacy Dovecot (no MOVE advertised) with the ACL and quota plugins and a master user.

    * ACLs: a global ACL file (``acl = vfile:<root>/acl-global:cache_secs=0``) that only this
      object writes.  Without an entry a user has Dovecot's default owner rights on its own
      mailboxes (MYRIGHTS ``lrwstipekxacd``); :meth:`set_rights` replaces them for one
      (user, mailbox) pair.  Dovecot stats the file before every rights check, so a change
      applies at once, to the next command of sessions that already have the mailbox selected.
    * Quota: backend ``count``; per-user limits (:meth:`set_quota`) are a ``quota_rule`` field
      of a per-user passwd-file userdb (``<root>/userdb/<user>``) consulted before the static
      one.  They apply to sessions that log in afterwards.  A COPY/APPEND that would exceed a
      limit gets ``NO [OVERQUOTA]``.
    * Master user: ``AUTHENTICATE PLAIN`` with authzid=<user>, authcid=:attr:`master_user`,
      password :attr:`master_password` (or ``LOGIN <user>*<master_user> <master_password>``)
      opens a session as <user>.  ``acl_user = %u`` makes such a session subject to <user>'s
      rights, exactly like the user's own sessions.
    * CAPABILITY: the legacy list plus ``QUOTA ACL RIGHTS=texk`` (what the plugins add to
      Dovecot's default list; an explicit ``imap_capability`` would otherwise drop them).
    """

    kind = "dovecot"
    #: Dovecot's own rights letters (RFC 4314 without the obsolete "c" and "d").
    ALL_RIGHTS: ClassVar[str] = "lrwstipekxa"
    #: MYRIGHTS of a user on its own mailbox without any ACL entry.
    DEFAULT_MYRIGHTS: ClassVar[str] = "lrwstipekxacd"
    CAPABILITY: ClassVar[str] = DOVECOT_LEGACY_CAPABILITY + " QUOTA ACL RIGHTS=texk"

    def __init__(
        self,
        root: Path,
        *,
        name: str = "dovecot-acl",
        password: str = DEFAULT_PASSWORD,
        master_user: str = "proxymaster",
        master_password: str = "imap-test-master-secret",
        extra_config: str = "",
    ) -> None:
        super().__init__(
            root, variant="legacy", name=name, password=password, extra_config=extra_config
        )
        self.master_user = master_user
        self.master_password = master_password
        self.master_separator = "*"
        self.acl_path = self.root / "acl-global"
        self.userdb_dir = self.root / "userdb"
        self.master_path = self.root / "master-users"
        self._rights: dict[tuple[str, str], str] = {}
        self._stamp = 0

    # -- configuration --------------------------------------------------------------------------

    def _prepare(self) -> None:
        super()._prepare()
        self._write_acl_file()
        self.userdb_dir.mkdir(exist_ok=True)
        self.userdb_dir.chmod(0o755)
        self._atomic_write(
            self.master_path, f"{self.master_user}:{{PLAIN}}{self.master_password}\n"
        )

    def _capability_setting(self) -> str:
        return f"imap_capability = {self.CAPABILITY}"

    def _auth_config(self) -> str:
        return f"""auth_master_user_separator = {self.master_separator}
passdb {{
  driver = passwd-file
  master = yes
  args = {self.master_path}
}}
# A user with a quota (set_quota) has a file here; everyone else falls through to static.
userdb {{
  driver = passwd-file
  args = {self.userdb_dir}/%u
}}
{super()._auth_config()}"""

    def _plugins_config(self) -> str:
        return f"""mail_plugins = $mail_plugins acl quota
protocol imap {{
  mail_plugins = $mail_plugins imap_acl imap_quota
}}
plugin {{
  acl = vfile:{self.acl_path}:cache_secs=0
  # A master user session gets the rights of the user it logged in as.
  acl_user = %u
  quota = count:User quota
  quota_vsizes = yes
}}"""

    # -- ACL ------------------------------------------------------------------------------------

    @classmethod
    def dovecot_rights(cls, rights: str) -> str:
        """RFC 4314 rights letters as Dovecot letters: "c" -> "kx", "d" -> "et" (as imap_acl)."""
        letters = set(rights.replace("c", "kx").replace("d", "et"))
        unknown = letters - set(cls.ALL_RIGHTS)
        if unknown:
            raise ValueError(f"unknown ACL right(s) {''.join(sorted(unknown))!r} in {rights!r}")
        return "".join(letter for letter in cls.ALL_RIGHTS if letter in letters)

    def set_rights(self, user: str, mailbox: str, rights: str) -> None:
        """Give ``user`` exactly ``rights`` (RFC 4314 letters) on its own ``mailbox``.

        Takes effect immediately, also for sessions that have ``mailbox`` selected.
        """
        with self._lock:
            self._rights[(user, mailbox)] = self.dovecot_rights(rights)
            self._write_acl_file()

    def revoke_rights(self, user: str, mailbox: str, letters: str) -> None:
        """Full rights on ``mailbox`` except ``letters`` (e.g. ``"t"`` or ``"te"``)."""
        removed = set(self.dovecot_rights(letters))
        self.set_rights(user, mailbox, "".join(r for r in self.ALL_RIGHTS if r not in removed))

    def reset_rights(self, user: str, mailbox: str | None = None) -> None:
        """Back to the default (full owner rights) on ``mailbox``, or on all of them if None."""
        with self._lock:
            for key in list(self._rights):
                if key[0] == user and mailbox in (None, key[1]):
                    del self._rights[key]
            self._write_acl_file()

    def _write_acl_file(self) -> None:
        lines = [
            f"{_acl_quote(mailbox)} user={user} {rights}\n"
            for (user, mailbox), rights in sorted(self._rights.items())
        ]
        self._atomic_write(self.acl_path, "# Generated by tests/servers.py\n" + "".join(lines))

    # -- quota ----------------------------------------------------------------------------------

    def set_quota(
        self, user: str, *, messages: int | None = None, storage_kb: int | None = None
    ) -> None:
        """Limit ``user``'s total message count and/or storage (KiB); both None: no quota.

        Applies to sessions that log in afterwards (not to those already logged in).
        """
        path = self.userdb_dir / user
        if path.exists():
            # Dovecot's passwd-file userdb stats a file at most once per second: a lookup of
            # this user earlier in this very second would hide the change from the next one.
            time.sleep(1.0 - time.time() % 1.0 + 0.01)
        rule = "*"
        if storage_kb is not None:
            rule += f":storage={storage_kb}K"
        if messages is not None:
            rule += f":messages={messages}"
        home = self.home_dir / user
        with self._lock:
            if rule == "*":
                path.unlink(missing_ok=True)
                return
            self._atomic_write(
                path,
                f"{user}::{self.mail_uid}:{self.mail_gid}::{home}::userdb_quota_rule={rule}\n",
            )

    # -- master user ----------------------------------------------------------------------------

    def connect_master(self, user: str, *, timeout: float = 10.0) -> imaplib.IMAP4:
        """Return an imaplib connection logged in as ``user`` through the master user."""
        imap = self.connect(timeout=timeout)
        secret = f"{user}\0{self.master_user}\0{self.master_password}".encode()
        try:
            imap.authenticate("PLAIN", lambda _challenge: secret)
        except BaseException:
            with contextlib.suppress(Exception):
                imap.shutdown()
            raise
        return imap

    # -- helpers --------------------------------------------------------------------------------

    def _atomic_write(self, path: Path, text: str) -> None:
        """Replace ``path`` (world-readable) and give it an mtime no earlier write had.

        Dovecot notices changes of these files by (inode,) size and mtime in whole seconds:
        two writes of the same size within a second would otherwise go unnoticed.
        """
        self._stamp = max(int(time.time()), self._stamp + 1)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.utime(tmp, (self._stamp, self._stamp))
        tmp.replace(path)


def _acl_quote(name: str) -> str:
    """A mailbox name as a quoted pattern of Dovecot's global ACL file."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Imap4dServer(ImapServer):
    """A private GNU Mailutils imap4d daemon (no MOVE, no UIDPLUS)."""

    kind = "imap4d"
    DOMAIN: ClassVar[str] = "test"

    def __init__(
        self,
        root: Path,
        *,
        name: str = "imap4d",
        extra_config: str = "",
    ) -> None:
        # The password is fixed: the passwd file holds a precomputed hash of it.
        super().__init__(root, name=name, password=DEFAULT_PASSWORD)
        self.extra_config = extra_config
        self.config_path = self.root / "imap4d.conf"
        self.home_dir = self.root / "home"
        self.passwd_dir = self.root / "virtdomain"
        # imap4d logs (incl. the session transcript) to stderr, captured in stdout.log.
        self.log_path = self.stdout_path

    def _prepare(self) -> None:
        self.home_dir.mkdir(exist_ok=True)
        self.home_dir.chmod(0o755)
        self.passwd_dir.mkdir(exist_ok=True)
        (self.passwd_dir / self.DOMAIN).touch()

    def _command(self) -> list[str]:
        return [find_binary("imap4d"), f"--config-file={self.config_path}"]

    def _write_config(self) -> None:
        self.config_path.write_text(
            f"""# Generated by tests/servers.py for {self.name}
mode daemon;
foreground yes;
max-children 200;
create-home-dir yes;
home-dir-mode 0700;
logging {{
  syslog no;
  severity debug;
}};
tcp-wrappers {{
  enable no;
}};
auth {{
  authorization virtdomain;
  authentication generic;
}};
virtdomain {{
  passwd-dir "{self.passwd_dir}";
}};
server {self.host}:{self.port} {{
  transcript yes;
}};
{self.extra_config}
"""
        )

    def _user_name(self, local: str) -> str:
        return f"{local}@{self.DOMAIN}"

    def _add_user(self, user: str) -> None:
        local = user.partition("@")[0]
        home = self.home_dir / local
        # imap4d runs virtdomain sessions as root (no setuid).  Pre-create the INBOX: imap4d
        # only creates it on SELECT/EXAMINE, an APPEND to a missing INBOX fails with TRYCREATE.
        home.mkdir(mode=0o700)
        (home / "INBOX").touch(mode=0o600)
        line = f"{local}:{_IMAP4D_PASSWORD_HASH}:{self.mail_uid}:{self.mail_gid}::{home}:/bin/false"
        with (self.passwd_dir / self.DOMAIN).open("a") as passwd:
            passwd.write(line + "\n")

    def received_bytes(self, user: str | None = None) -> bytes:
        """Client lines from imap4d's transcript (``C:`` lines), CRLF terminated.

        Reconstructed, not raw: literal data shows as ``(data...)``, LOGIN passwords as
        ``"***"``.  ``user`` is not supported (transcripts are not tagged with the user).
        """
        if user is not None:
            raise NotImplementedError("imap4d transcripts cannot be filtered by user")
        lines = []
        for line in self.log_text().splitlines():
            _, sep, rest = line.partition(": C: ")
            if sep:
                lines.append(rest.encode() + b"\r\n")
        return b"".join(lines)


# -- UW-IMAP imapd 2007f, built from the tarball of ../shared/servers ------------------------------

UW_IMAP_VERSION = "2007f"
UW_IMAP_TARBALL_ENV = "UW_IMAP_TARBALL"
_REPO_ROOT = Path(__file__).resolve().parent.parent
UW_IMAP_BUILD_DIR = _REPO_ROOT / "build" / f"uw-imap-{UW_IMAP_VERSION}"
UW_IMAP_MIX_BUILD_DIR = _REPO_ROOT / "build" / f"uw-imap-{UW_IMAP_VERSION}-mix"
UwFormat = Literal["mbox", "mix"]
# The make variables (in SPECIALS, after MAILSPOOL) that set each format as the default for new
# and for zero-byte mailboxes: mbox is UW's own default (unixproto).
_UW_FORMAT_SPECIALS: dict[str, tuple[str, ...]] = {
    "mbox": (),
    "mix": ("CREATEPROTO=mixproto", "EMPTYPROTO=mixproto"),
}
_UW_BUILD_TOOLS = ("gcc", "make", "tar")
_UW_BUILD_TIMEOUT = 900.0
# Characters socat would take for its own syntax in an EXEC: address (or sh in the wrapper).
_SOCAT_UNSAFE = re.compile(r"[\s,:!'\"\\$`;&|<>()*?\[\]{}]")


def uw_imap_tarball() -> Path:
    """The source tarball: ``$UW_IMAP_TARBALL``, else ``<repo>/../shared/servers/...``."""
    override = os.environ.get(UW_IMAP_TARBALL_ENV)
    if override:
        return Path(override)
    return _REPO_ROOT.parent / "shared" / "servers" / f"uw-imap-{UW_IMAP_VERSION}.tar.gz"


def uw_imap_build_dir(fmt: UwFormat) -> Path:
    """The cached build of the imapd whose new mailboxes are ``fmt``: :data:`UW_IMAP_BUILD_DIR`
    (mbox) or :data:`UW_IMAP_MIX_BUILD_DIR` (mix)."""
    return UW_IMAP_MIX_BUILD_DIR if fmt == "mix" else UW_IMAP_BUILD_DIR


def build_uw_imapd(build_dir: Path | None = None, *, fmt: UwFormat = "mbox") -> Path:
    """Return ``<build_dir>/imapd``, building it from :func:`uw_imap_tarball` if it is missing.

    ``make slx SSLTYPE=none`` (shadow passwords + crypt(3), plaintext LOGIN allowed), with the
    INBOX spool compiled in as ``<build_dir>/spool`` (mode 1777, as UW demands).  ``fmt`` is the
    format of the mailboxes a plain CREATE (or an APPEND to a missing INBOX) makes: ``mbox``,
    UW's default, or ``mix`` (``CREATEPROTO=mixproto EMPTYPROTO=mixproto``).  ``build_dir``
    defaults to :func:`uw_imap_build_dir`: one build per format.  The binary is cached: it is
    rebuilt only if it is missing, or if ``<build_dir>/imapd.spool`` records another spool path
    (the repository moved) or format.  An exclusive ``flock`` on ``<build_dir>/.lock`` keeps
    concurrent pytest processes from building at the same time.  Raises ServerNotInstalled if
    a build tool or the tarball is missing, ServerError if the build fails (the tail of
    ``build.log`` is in it).
    """
    if fmt not in _UW_FORMAT_SPECIALS:
        raise ValueError(f"unknown UW-IMAP mailbox format {fmt!r}")
    build_dir = Path(build_dir or uw_imap_build_dir(fmt)).resolve()
    binary = build_dir / "imapd"
    spool = build_dir / "spool"
    stamp = build_dir / "imapd.spool"
    specials = (f"MAILSPOOL={spool}", *_UW_FORMAT_SPECIALS[fmt])
    # What imapd.spool records: the spool path, then the format's make variables, one a line.
    record = "".join(f"{line}\n" for line in (str(spool), *_UW_FORMAT_SPECIALS[fmt]))
    if _uw_build_current(binary, stamp, record):
        return binary
    build_dir.mkdir(parents=True, exist_ok=True)
    with (build_dir / ".lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if _uw_build_current(binary, stamp, record):  # another process built it meanwhile
            return binary
        tarball = uw_imap_tarball()
        if not tarball.is_file():
            raise ServerNotInstalled(
                f"UW-IMAP source tarball {tarball} not found (set ${UW_IMAP_TARBALL_ENV})"
            )
        tools = {tool: find_binary(tool) for tool in _UW_BUILD_TOOLS}
        if _SOCAT_UNSAFE.search(str(spool)):
            raise ServerError(f"UW-IMAP: unusable characters in the spool path {spool}")
        src = build_dir / "src"
        log_path = build_dir / "build.log"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir()
        spool.mkdir(exist_ok=True)
        spool.chmod(0o1777)
        started = time.monotonic()
        with log_path.open("wb") as log:
            steps = [
                [tools["tar"], "-xzf", str(tarball), "-C", str(src), "--strip-components=1"],
                # The build asks whether to build without SSL: answer "y" on its stdin.
                [tools["make"], "slx", "SSLTYPE=none", f"SPECIALS={' '.join(specials)}"],
            ]
            for step in steps:
                log.write(f"=== {' '.join(step)}\n".encode())
                log.flush()
                try:
                    done = subprocess.run(
                        step, cwd=src, input=b"y\n" * 8, stdout=log, stderr=subprocess.STDOUT,
                        timeout=_UW_BUILD_TIMEOUT, check=False,
                    )  # fmt: skip
                except subprocess.TimeoutExpired:
                    raise ServerError(f"UW-IMAP build timed out: see {log_path}") from None
                if done.returncode != 0:
                    raise ServerError(
                        f"UW-IMAP build failed ({' '.join(step[:2])}: exit {done.returncode}),"
                        f" see {log_path}:\n{_tail(log_path)}"
                    )
        built = src / "imapd" / "imapd"
        if not built.is_file():
            raise ServerError(f"UW-IMAP build made no imapd, see {log_path}:\n{_tail(log_path)}")
        tmp = binary.with_name(".imapd.tmp")
        shutil.copy2(built, tmp)
        tmp.chmod(0o755)
        tmp.replace(binary)
        stamp.write_text(record)
        with log_path.open("a") as log:
            log.write(f"=== built in {time.monotonic() - started:.1f} s\n")
        shutil.rmtree(src, ignore_errors=True)
    return binary


def _uw_build_current(binary: Path, stamp: Path, record: str) -> bool:
    try:
        return os.access(binary, os.X_OK) and stamp.read_text() == record
    except OSError:
        return False


class UwImapServer(ImapServer):
    """UW-IMAP imapd 2007f (UIDPLUS, no MOVE), served by ``socat`` on 127.0.0.1.

    * Binary: :func:`build_uw_imapd`, one build per format, built once into
      ``<repo>/build/uw-imap-2007f`` (mbox) or ``<repo>/build/uw-imap-2007f-mix`` (mix).
    * Users are real Unix users (``uwt`` + lower-case letters/digits, at most 32 characters)
      created by :meth:`new_user` with ``useradd``, home ``<root>/home/<user>``, password
      :attr:`password` set with ``chpasswd``.  They are deleted (``userdel``) when the server
      stops, and at interpreter exit at the latest.  imapd switches to the user after LOGIN.
    * ``fmt="mbox"``: UW's default build; every folder is a traditional mbox file in the home
      directory; INBOX is ``<build>/spool/<user>``.  A second read-write SELECT of a mailbox ends
      the session that had it open (``* BYE Killed (lost mailbox lock)``).
    * ``fmt="mix"``: an imapd built with mix as its default format (``CREATEPROTO=mixproto
      EMPTYPROTO=mixproto``), as an operator running UW with mix configures it: every plain
      ``CREATE`` -- by :meth:`seed`/:meth:`create`, the proxy, any client -- makes a mix
      directory in the home directory, and the first APPEND to INBOX makes ``~/INBOX`` a mix
      directory (the spool stays unused).  Several sessions can have a mix folder open
      read-write.  COPY to a missing folder gets TRYCREATE in both formats.
    * :meth:`received_bytes`: each connection runs ``socat -r <file> STDIO EXEC:imapd`` (a
      wrapper script), which records every byte the client sent, LOGIN and pre-login
      commands included, into ``<root>/raw/<time>-<pid>.in``.
    * :meth:`log_text`: socat's log (imapd itself logs to syslog only).
    """

    kind = "uw-imap"
    USER_PREFIX: ClassVar[str] = "uwt"
    MAX_USER_LEN: ClassVar[int] = 32
    CAPABILITY: ClassVar[str] = (
        "IMAP4REV1 I18NLEVEL=1 LITERAL+ IDLE UIDPLUS NAMESPACE CHILDREN MAILBOX-REFERRALS "
        "BINARY UNSELECT ESEARCH WITHIN SCAN SORT THREAD=REFERENCES THREAD=ORDEREDSUBJECT "
        "MULTIAPPEND"
    )

    def __init__(
        self,
        root: Path,
        *,
        fmt: UwFormat = "mbox",
        name: str | None = None,
        password: str = DEFAULT_PASSWORD,
        build_dir: Path | None = None,
    ) -> None:
        if fmt not in ("mbox", "mix"):
            raise ValueError(f"unknown UW-IMAP mailbox format {fmt!r}")
        if ":" in password or "\n" in password:
            raise ValueError("the password must not contain ':' or a newline (chpasswd)")
        super().__init__(root, name=name or f"uw-imap-{fmt}", password=password)
        self.fmt = fmt
        self.build_dir = Path(build_dir or uw_imap_build_dir(fmt)).resolve()
        self.spool_dir = self.build_dir / "spool"
        self.home_dir = self.root / "home"
        self.raw_dir = self.root / "raw"
        self.wrapper_path = self.root / "imapd-session.sh"
        self.log_path = self.stdout_path  # socat's stderr (-d: one line per connection)
        self.imapd = Path()
        self.users: list[str] = []

    # -- server ---------------------------------------------------------------------------------

    def _prepare(self) -> None:
        for tool in ("socat", "useradd", "userdel", "chpasswd"):
            find_binary(tool)
        self.imapd = build_uw_imapd(self.build_dir, fmt=self.fmt)
        for path in (self.imapd, self.wrapper_path, self.raw_dir):
            if _SOCAT_UNSAFE.search(str(path)):
                raise ServerError(f"{self.name}: unusable characters in the path {path}")
        self.spool_dir.mkdir(exist_ok=True)
        self.spool_dir.chmod(0o1777)
        make_traversable(self.spool_dir)
        self.home_dir.mkdir(exist_ok=True)
        self.home_dir.chmod(0o755)
        self.raw_dir.mkdir(exist_ok=True)
        self.raw_dir.chmod(0o700)

    def _write_config(self) -> None:
        # One wrapper per connection (run as root by socat): a relaying socat records what the
        # client sends (-r) and exits 0.1 s after imapd did, so the client sees the close.
        self.wrapper_path.write_text(
            f"""#!/bin/sh
# Generated by tests/servers.py for {self.name}
exec socat -t 0.1 -r "{self.raw_dir}/$(date +%s.%N)-$$.in" STDIO EXEC:{self.imapd}
"""
        )
        self.wrapper_path.chmod(0o755)

    def _command(self) -> list[str]:
        return [
            find_binary("socat"),
            "-d",
            f"TCP-LISTEN:{self.port},bind={self.host},reuseaddr,fork",
            f"EXEC:{self.wrapper_path},nofork",
        ]

    def stop(self) -> None:
        super().stop()
        with self._lock:
            users, self.users = self.users, []
        for user in users:
            self._delete_user(user)

    # -- users ----------------------------------------------------------------------------------

    def _user_name(self, local: str) -> str:
        tail = re.sub(r"[^a-z0-9]", "", local.lower())
        # Keep the end (counter + random hex): it is what makes the name unique.
        return self.USER_PREFIX + tail[-(self.MAX_USER_LEN - len(self.USER_PREFIX)) :]

    def _add_user(self, user: str) -> None:
        if self.proc is None:
            raise ServerError(f"{self.name}: start the server before creating users")
        home = self.home_dir / user
        _run_checked(
            [find_binary("useradd"), "--no-create-home", "--home-dir", str(home),
             "--shell", "/usr/sbin/nologin", "--comment", "imapmoveproxy test", user]
        )  # fmt: skip
        self.users.append(user)
        _UW_USERS.add(user)
        _run_checked([find_binary("chpasswd")], stdin=f"{user}:{self.password}\n")
        entry = pwd.getpwnam(user)
        home.mkdir(mode=0o700)
        os.chown(home, entry.pw_uid, entry.pw_gid)

    def _delete_user(self, user: str) -> None:
        _delete_unix_user(user)
        (self.spool_dir / user).unlink(missing_ok=True)

    # -- mailboxes ------------------------------------------------------------------------------

    def create(self, user: str, name: str) -> None:
        """CREATE folder ``name`` of ``user`` (in :attr:`fmt`; no error if it already exists).

        INBOX is left alone: the first APPEND makes it (the spool file, or ``~/INBOX`` for mix).
        """
        if name.upper() == "INBOX":
            return
        imap = self.connect(user)
        try:
            typ, data = imap.create(quote_mailbox(name))
            if typ != "OK" and not _already_exists(data):
                raise ServerError(f"CREATE {name!r} failed: {typ} {data!r}")
        finally:
            with contextlib.suppress(Exception):
                imap.logout()

    def mailbox_path(self, user: str, name: str) -> Path:
        """Where folder ``name`` of ``user`` lives on disk (file: mbox, directory: mix)."""
        if name.upper() == "INBOX" and self.fmt == "mbox":
            return self.spool_dir / user
        return self.home_dir / user / ("INBOX" if name.upper() == "INBOX" else name)

    # -- observation ----------------------------------------------------------------------------

    def session_files(self, user: str | None = None) -> list[Path]:
        """The per-connection recordings, oldest first (with ``user``: its LOGIN sessions)."""
        files = sorted(self.raw_dir.glob("*.in"), key=lambda p: (p.stat().st_mtime, p.name))
        if user is None:
            return files
        return [path for path in files if _logged_in_as(path.read_bytes(), user)]

    def received_bytes(self, user: str | None = None) -> bytes:
        """Every byte clients sent, raw, per connection in order (pre-login, LOGIN included).

        Without ``user`` this includes the readiness probes' ``z LOGOUT`` and the sessions of
        :meth:`seed`/:meth:`create`; with ``user`` only sessions that sent ``LOGIN <user>``
        (name as atom, quoted string or literal; AUTHENTICATE is not attributed).
        """
        return b"".join(path.read_bytes() for path in self.session_files(user))


def _logged_in_as(data: bytes, user: str) -> bool:
    name = re.escape(user.encode())
    pattern = rb"^\S+ LOGIN (?:" + name + rb"|\"" + name + rb"\"|\{\d+\+?\}\r\n" + name + rb") "
    return re.search(pattern, data, re.IGNORECASE | re.MULTILINE) is not None


def _run_checked(command: list[str], *, stdin: str | None = None) -> None:
    done = subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise ServerError(f"{command[0]} failed (exit {done.returncode}): {done.stderr.strip()}")


def _delete_unix_user(user: str) -> None:
    """``userdel --force`` (no home removal: it lives in the server root); quiet if gone."""
    _UW_USERS.discard(user)
    try:
        pwd.getpwnam(user)
    except KeyError:
        return
    subprocess.run(
        [find_binary("userdel"), "--force", user], capture_output=True, timeout=60, check=False
    )


# Unix users created by UwImapServer and not deleted yet (deleted at exit at the latest).
_UW_USERS: set[str] = set()


@atexit.register
def _delete_uw_users() -> None:
    for user in list(_UW_USERS):
        with contextlib.suppress(Exception):
            _delete_unix_user(user)


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 (Debian package ``redis-server``), for the MOVE
    lock shared by several proxies: no persistence, its files in ``root``. :meth:`stop` and
    :meth:`start` again keep the port, so a proxy sees the same server come back (empty)."""

    def __init__(self, root: Path, *, monitor: RedisServer | None = None) -> None:
        self.root = Path(root)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.monitor = monitor  # set: a Sentinel watching that server as service "primary"

    @property
    def url(self) -> str:
        if self.monitor is not None:
            return f"redis+sentinel://{HOST}:{self.port}/primary/0"
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> Self:
        binary = find_binary("redis-server")
        self.root.mkdir(parents=True, exist_ok=True)
        for _attempt in range(PORT_ATTEMPTS):
            self.port = self.port or find_free_port()
            command = [binary, "--bind", HOST, "--port", str(self.port), "--dir", str(self.root),
                       "--daemonize", "no", "--logfile", str(self.root / "redis.log")]  # fmt: skip
            if self.monitor is None:
                command += ["--save", "", "--appendonly", "no"]
            else:  # Sentinel needs a configuration file of its own, and rewrites it
                config = self.root / "sentinel.conf"
                config.write_text(f"sentinel monitor primary {HOST} {self.monitor.port} 1\n")
                command[1:1] = [str(config), "--sentinel"]
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, cwd=self.root)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self.cli("PING") == "PONG":
                    return self
                time.sleep(0.05)
            self.stop()
            if "Address already in use" not in _tail(self.root / "redis.log"):
                break
            self.port = 0
        raise ServerError(f"redis-server did not start: {_tail(self.root / 'redis.log')}")

    def cli(self, *command: str) -> str:
        """One command through ``redis-cli``; its reply as text ("" if the server is down)."""
        done = subprocess.run(
            [find_binary("redis-cli"), "-h", HOST, "-p", str(self.port), "--raw", *command],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        return done.stdout.strip() if done.returncode == 0 else ""

    def stop(self) -> None:
        """Stop the server (its data is gone). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)


def _already_exists(data: list[object]) -> bool:
    text = b" ".join(d for d in data if isinstance(d, bytes)).upper()
    return b"ALREADYEXISTS" in text or b"EXISTS" in text


def _owns_listener(pid: int, host: str, port: int) -> bool:
    """True if process ``pid`` holds the LISTEN socket on host:port (Linux /proc check).

    Guards against a foreign server that grabbed the port between find_free_port() and our
    bind (our server then exits, but it may still be alive while we probe).  Without a
    readable /proc the check is skipped.
    """
    local = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return True
    inodes = {
        fields[9]
        for fields in (line.split() for line in lines)
        if len(fields) > 9 and fields[1] == local and fields[3] == "0A"
    }
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return True
    except OSError:
        return False
    return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode(errors="replace")
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return "(missing)"
        return f"(unreadable: {exc})"


# Safety net: stop whatever is still running when the interpreter exits.
_RUNNING: set[ImapServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()
