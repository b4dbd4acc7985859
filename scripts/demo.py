"""`make demo`: a legacy Dovecot (MOVE hidden) on 127.0.0.1 and the proxy in front of it.

Needs Debian's dovecot-imapd and root (Dovecot drops to its own users): `make demo` installs it
(scripts/install-deps.sh demo) before it runs this.
Stop it with Ctrl-C; everything lives under ./demo/ and is removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers import DovecotServer, ServerError, make_message  # noqa: E402

LISTEN = os.environ.get("DEMO_LISTEN", "127.0.0.1:1143")
USER = "demo"


def main() -> int:
    if os.geteuid() != 0:
        print("make demo must run as root: Dovecot switches to its own users.", file=sys.stderr)
        return 1
    workdir = ROOT / "demo"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    try:
        with DovecotServer(workdir, variant="legacy", name="legacy-demo") as dovecot:
            dovecot.seed(USER, "INBOX", [make_message(f"demo message {i}") for i in range(1, 6)])
            dovecot.seed(USER, "Archive", [])
            host, port = LISTEN.rsplit(":", 1)
            print(
                f"\nLegacy Dovecot (no MOVE advertised) on {dovecot.host}:{dovecot.port}.\n"
                f"imapmoveproxy on {LISTEN}. Log in as {USER!r} with password "
                f"{dovecot.password!r}; INBOX has five messages, Archive is empty. Try:\n\n"
                f"  python3 -c \"import imaplib; m = imaplib.IMAP4('{host}', {port}); "
                f"m.login('{USER}', '{dovecot.password}'); print(m.capabilities); "
                f"m.select('INBOX'); print(m.uid('MOVE', '1:2', 'Archive')); "
                f"print(m.untagged_responses)\"\n\n"
                "or by hand: nc -C " + f"{host} {port}" + "\n\nCtrl-C stops both.\n",
                flush=True,
            )
            command = [sys.executable, "-m", "imapmoveproxy", "--listen", LISTEN,
                       "--upstream", f"{dovecot.host}:{dovecot.port}"]  # fmt: skip
            with contextlib.suppress(KeyboardInterrupt):
                subprocess.run(command, cwd=ROOT, check=False)
    except ServerError as exc:
        print(f"cannot start Dovecot: {exc}\nInstall it with: apt-get install dovecot-imapd",
              file=sys.stderr)  # fmt: skip
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
