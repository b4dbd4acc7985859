"""Drive a terminal program in a private tmux server: send keys, read the screen.

Every wait is bounded in time; the program runs as ``sh -c 'PROGRAM; echo <marker> $?; sleep'``
so that its exit status shows on the screen, and :meth:`Tmux.close` kills the private tmux
server (and so the program) whatever happened.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

EXIT_MARKER = "__COMPAT_EXIT__"
_EXIT_RE = re.compile(EXIT_MARKER + r" (\d+)")
POLL = 0.1


class ScreenTimeout(AssertionError):
    """The expected text did not appear on the screen in time."""


class Tmux:
    def __init__(
        self,
        tmux: str,
        socket: Path,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        width: int = 160,
        height: int = 45,
        linger: float = 120,
    ) -> None:
        self.tmux = tmux
        self.socket = socket
        self.env = dict(env)
        self.history: list[str] = []
        program = shlex.join(command)
        shell = f"{program}; echo {EXIT_MARKER} $?; sleep {int(linger)}"
        self._tmux(
            "-f", "/dev/null", "new-session", "-d", "-s", "compat",
            "-x", str(width), "-y", str(height), "-c", str(cwd), "sh", "-c", shell,
        )  # fmt: skip

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-S", str(self.socket), *args],
            env=self.env, capture_output=True, text=True, timeout=15, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args[:3])} failed: {done.stderr.strip()}")
        return done.stdout

    def screen(self) -> str:
        text = self._tmux("capture-pane", "-p", "-t", "compat")
        if not self.history or self.history[-1] != text:
            self.history.append(text)
        return text

    def send(self, *keys: str) -> None:
        """tmux key names (``Enter``, ``C-u``, ``Escape``...), each sent as one key."""
        self._tmux("send-keys", "-t", "compat", *keys)

    def write(self, text: str) -> None:
        """Literal text."""
        self._tmux("send-keys", "-t", "compat", "-l", text)

    def wait_for(self, pattern: str, timeout: float = 15) -> re.Match[str]:
        """Wait until the regular expression ``pattern`` matches the screen."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.MULTILINE)
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            match = regex.search(screen)
            if match:
                return match
            if _EXIT_RE.search(screen) and not regex.pattern.startswith(EXIT_MARKER):
                break
            time.sleep(POLL)
        raise ScreenTimeout(f"{pattern!r} not on the screen within {timeout} s:\n{screen}")

    def wait_exit(self, timeout: float = 20) -> int:
        """The program's exit status, once it has ended."""
        match = self.wait_for(EXIT_MARKER + r" (\d+)", timeout)
        return int(match.group(1))

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError, subprocess.SubprocessError):
            self._tmux("kill-server")
        with contextlib.suppress(OSError):
            self.socket.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def transcript(self) -> str:
        """Every distinct screen seen, for failure messages and logs."""
        return "\n---- screen ----\n".join(self.history)
