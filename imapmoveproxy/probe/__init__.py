"""``imapmoveproxy probe``: will the proxy work in front of this server?

The probe connects to the upstream exactly as the proxy would (the same TLS and PROXY protocol
settings, from the same flags, environment variables and config file) and reports what the
server offers that matters to the proxy and which MOVE policy the proxy would use. Given a user
(``--user``, with the password in ``--password-file`` or the environment variable
``IMAP_PROBE_PASSWORD``, never on the command line), it also runs a live self-test that touches
nothing but two scratch mailboxes it creates and deletes.

Exit status: 0 works, 1 works with caveats, 2 will not work (or the command line was wrong).

| module | job |
| --- | --- |
| :mod:`.cli` | the command line; one run (:class:`.cli.Probe`) |
| :mod:`.judge` | what the probe concludes: capabilities and replies in, findings out (pure) |
| :mod:`.selftest` | the live self-test in the scratch mailboxes |
| :mod:`.session` | the probe's own sessions with the server, on the shell's conversation driver |
| :mod:`.report` | findings, verdict, text and JSON |
"""

from .cli import main

__all__ = ["main"]
