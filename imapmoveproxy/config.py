"""Configuration: a TOML file overridden by command-line flags (keys: config.example.toml)."""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

LOG_LEVELS = ("debug", "info", "warning", "error")
NO_UIDPLUS_POLICIES = ("refuse", "guarded")


class ConfigError(Exception):
    """A configuration problem, worded for a one-line report that names the key."""


@dataclass(slots=True, frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(slots=True, frozen=True)
class Config:
    listen: Address
    upstream: Address
    connect_timeout: float = 10.0
    log_level: str = "info"
    max_line_length: int = 65536
    max_mailbox_literal: int = 4096
    max_set_bytes: int = 8192
    drain_timeout: float = 30.0
    no_uidplus: str = "refuse"


def parse_address(key: str, value: object) -> Address:
    if not isinstance(value, str):
        raise ConfigError(f'{key}: expected "HOST:PORT", got {value!r}')
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f'{key}: expected "HOST:PORT", got {value!r}')
    return Address(host, int(port))


def _number(key: str, value: object, kind: type, minimum: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key}: must be at least {minimum}, got {value!r}")
    return kind(value)


_MINIMUMS = {
    "connect_timeout": 0.1,
    "max_line_length": 1024,
    "max_mailbox_literal": 1,
    "max_set_bytes": 64,
    "drain_timeout": 0.0,
}


def build(values: dict[str, object]) -> Config:
    """Validate raw values (from TOML and flags) into a Config."""
    known = {f.name for f in fields(Config)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{key}: unknown setting")
    for key in ("listen", "upstream"):
        if key not in values:
            raise ConfigError(f"{key}: required (set it in the config file or with --{key})")
    kwargs: dict[str, Any] = {
        "listen": parse_address("listen", values["listen"]),
        "upstream": parse_address("upstream", values["upstream"]),
    }
    level = values.get("log_level", "info")
    if level not in LOG_LEVELS:
        raise ConfigError(f"log_level: expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    kwargs["log_level"] = level
    policy = values.get("no_uidplus", "refuse")
    if policy not in NO_UIDPLUS_POLICIES:
        choices = ", ".join(NO_UIDPLUS_POLICIES)
        raise ConfigError(f"no_uidplus: expected one of {choices}, got {policy!r}")
    kwargs["no_uidplus"] = policy
    for key, minimum in _MINIMUMS.items():
        if key in values:
            kind = float if key.endswith("timeout") else int
            kwargs[key] = _number(key, values[key], kind, minimum)
    return Config(**kwargs)


def load_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from exc


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imapmoveproxy",
        description="IMAP proxy that adds MOVE (RFC 6851) in front of servers that lack it.",
    )
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--listen", help="address to accept clients on, HOST:PORT")
    parser.add_argument("--upstream", help="IMAP server to forward to, HOST:PORT")
    parser.add_argument("--connect-timeout", type=float, help="seconds to reach the upstream")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="log verbosity")
    parser.add_argument(
        "--no-uidplus",
        choices=NO_UIDPLUS_POLICIES,
        help="MOVE over a server without UIDPLUS: refuse (default) or guarded emulation",
    )
    return parser


def from_arguments(argv: list[str] | None) -> Config:
    args = argument_parser().parse_args(argv)
    values: dict[str, object] = load_file(args.config) if args.config else {}
    for key in ("listen", "upstream", "connect_timeout", "log_level", "no_uidplus"):
        flag = getattr(args, key)
        if flag is not None:
            values[key] = flag
    return build(values)
