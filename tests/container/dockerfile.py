"""A minimal reader of the project's Dockerfile, for tests that check other files against it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    rest: str  # everything after the keyword, continuation lines joined


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Every instruction, comments dropped and backslash continuations joined."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in text.splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword:
            found.append(Instruction(keyword.upper(), rest.strip()))
    return found


def final_stage(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions of the last stage, from its FROM on."""
    found = instructions(path)
    start = max(i for i, instruction in enumerate(found) if instruction.keyword == "FROM")
    return found[start:]


def build_args(path: Path = DOCKERFILE) -> dict[str, str | None]:
    """ARG name -> default (None without one), over the whole file."""
    args: dict[str, str | None] = {}
    for instruction in instructions(path):
        if instruction.keyword == "ARG":
            name, sep, default = instruction.rest.partition("=")
            args[name] = default if sep else None
    return args


def exec_form(keyword: str, path: Path = DOCKERFILE) -> list[str]:
    """The JSON (exec form) argument list of the final stage's ENTRYPOINT or CMD."""
    (rest,) = [i.rest for i in final_stage(path) if i.keyword == keyword]
    value = json.loads(rest)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{keyword} is not in exec form: {rest}")
    return value


def user_id(path: Path = DOCKERFILE) -> int:
    """The final stage's USER as a number (${ARG} references resolved from ARG defaults)."""
    (user,) = [i.rest for i in final_stage(path) if i.keyword == "USER"]
    defaults = build_args(path)
    resolved = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1)) or "", user)
    return int(resolved.split(":")[0])


def cmd_option(option: str, path: Path = DOCKERFILE) -> str:
    """The value following ``option`` in the final stage's CMD."""
    cmd = exec_form("CMD", path)
    return cmd[cmd.index(option) + 1]
