"""The probe's report: findings, each with its level, and the verdict, as text or JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

WORKS, CAVEATS, FAILS = 0, 1, 2
VERDICTS = {WORKS: "works", CAVEATS: "works with caveats", FAILS: "will not work"}


@dataclass(slots=True)
class Finding:
    level: int  # WORKS (a check passed), CAVEATS or FAILS
    text: str


@dataclass(slots=True)
class Report:
    server: str
    upstream_tls: str
    greeting: str = ""
    capabilities: dict[str, bool] = field(default_factory=dict)
    capabilities_from: str = ""  # "before login" or "after login"
    policy: str = ""
    policy_text: str = ""
    self_test: bool = False
    mailboxes: list[str] = field(default_factory=list)
    nonstandard: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: int, text: str) -> None:
        self.findings.append(Finding(level, text))

    @property
    def status(self) -> int:
        return max((finding.level for finding in self.findings), default=WORKS)

    def as_json(self) -> str:
        data = dataclasses.asdict(self)
        data["verdict"] = VERDICTS[self.status]
        data["exit_status"] = self.status
        return json.dumps(data, indent=2)

    def as_text(self) -> str:
        lines = [f"server       {self.server} (upstream_tls = {self.upstream_tls})"]
        if self.greeting:
            shown = self.greeting if len(self.greeting) <= 100 else self.greeting[:97] + "..."
            lines.append(f"greeting     {shown}")
        if self.capabilities:
            lines.append(f"capabilities ({self.capabilities_from})")
            for name, offered in self.capabilities.items():
                lines.append(f"  {name:<11}{'yes' if offered else 'no'}")
        if self.policy:
            lines.append(f"MOVE policy  {self.policy}: {self.policy_text}")
        if self.mailboxes:
            lines.append(f"self-test    in scratch mailboxes {', '.join(self.mailboxes)}")
        marks = {WORKS: "ok", CAVEATS: "caveat", FAILS: "FAIL"}
        lines.extend(f"  {marks[f.level]:<7}{f.text}" for f in self.findings)
        lines.append(f"verdict: {VERDICTS[self.status]} (exit status {self.status})")
        return "\n".join(lines) + "\n"
