"""Configuration: a TOML file overridden by command-line flags (keys: config.example.toml)."""

from __future__ import annotations

import argparse
import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .wire.specialuse import ATTRIBUTES, DEFAULT_MAP

LOG_LEVELS = ("debug", "info", "warning", "error")
NO_UIDPLUS_POLICIES = ("refuse", "guarded")
UPSTREAM_TLS_MODES = ("none", "starttls", "implicit")
LOG_FORMATS = ("text", "json")
ROLLBACK_MODES = ("client", "master", "off")
MOVE_LOCK_UNAVAILABLE = ("proceed", "refuse")
JOURNAL_UNAVAILABLE = ("proceed", "refuse")
DEFAULT_JOURNAL = "/var/lib/imapmoveproxy/journal.sqlite"
ENV_PREFIX = "IMAPMOVEPROXY_"


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
    upstream: Address | None = None  # None: routing mode, a backend per user (``backends``)
    listen: Address | None = None
    listen_tls: Address | None = None
    connect_timeout: float = 10.0
    log_level: str = "info"
    log_format: str = "text"
    metrics: Address | None = None
    max_line_length: int = 65536
    max_mailbox_literal: int = 4096
    max_set_bytes: int = 8192
    drain_timeout: float = 30.0
    no_uidplus: str = "refuse"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_tls: bool = False  # becomes true by default once a certificate is configured
    tls_handshake_timeout: float = 10.0
    upstream_tls: str = "none"
    upstream_ca: Path | None = None
    upstream_server_name: str | None = None
    upstream_client_cert: Path | None = None
    upstream_client_key: Path | None = None
    upstream_tls_verify: bool = True
    proxy_protocol: bool = False
    proxy_protocol_trusted: tuple[IPNetwork, ...] = ()
    upstream_proxy_protocol: bool = False
    upstream_id: bool = True
    compress: bool = True  # offer COMPRESS=DEFLATE (RFC 4978) to clients once logged in
    special_use: bool = True  # SPECIAL-USE (RFC 6154) where the upstream lacks it
    special_use_map: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEFAULT_MAP)
    max_connections: int = 10000
    max_connections_per_address: int = 200
    login_timeout: float = 60.0
    line_timeout: float = 60.0
    move_chunk_size: int = 1000
    rollback: str = "client"
    rollback_master_user: str | None = None
    rollback_master_password: str | None = None
    rollback_timeout: float = 30.0
    move_step_timeout: float = 120.0
    move_lock: str | None = None  # Redis/Valkey URL of the lock shared by every replica
    move_lock_timeout: float = 60.0
    move_lock_lease: float = 10.0
    move_lock_unavailable: str = "proceed"
    # Routing mode: the proxy takes the login and connects the user's backend (docs/deployment.md)
    backends: Mapping[str, Config] = field(default_factory=dict)  # by name, each a whole Config
    routes: Mapping[str, str] = field(default_factory=dict)  # user, "@domain" or "*": backend
    route_lookup: str | None = None  # URL of an nginx auth_http service
    route_lookup_timeout: float = 5.0
    route_cache_ttl: float = 60.0  # seconds a lookup's answer is reused (0: never)
    login_attempts: int = 3  # failed logins a client may make on one connection
    login_failure_delay: float = 1.0  # seconds before a failed login's NO, per recent failure
    # Where MOVEs in progress are recorded: "auto" (Redis/Valkey with move_lock, else the SQLite
    # file DEFAULT_JOURNAL), "off", a SQLite file's path, or a redis:// URL.
    journal: str = "auto"
    journal_unavailable: str = "proceed"
    journal_fsync: bool = True  # SQLite: each entry on disk before the MOVE goes on

    @property
    def journal_location(self) -> str:
        """The journal's SQLite path or Redis URL; "off" if there is none."""
        if self.journal != "auto":
            return self.journal
        return self.move_lock if self.move_lock is not None else DEFAULT_JOURNAL


def parse_address(key: str, value: object) -> Address:
    if not isinstance(value, str):
        raise ConfigError(f'{key}: expected "HOST:PORT", got {value!r}')
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f'{key}: expected "HOST:PORT", got {value!r}')
    return Address(host, int(port))


def _number(kind: type, minimum: float) -> Callable[[str, object], Any]:
    def parse(key: str, value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if kind is int and not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{key}: must be at least {minimum}, got {value!r}")
        return kind(value)

    return parse


def _choice(choices: tuple[str, ...]) -> Callable[[str, object], str]:
    def parse(key: str, value: object) -> str:
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return parse


def _file(key: str, value: object) -> Path:
    if not isinstance(value, str | Path) or not Path(value).is_file():
        raise ConfigError(f"{key}: not a readable file: {value!r}")
    return Path(value)


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _lock_url(key: str, value: object) -> str:
    """redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS), or
    redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]."""
    expected = (
        f'{key}: expected "redis://HOST:PORT/DB", "rediss://..." or '
        f'"redis+sentinel://HOST:PORT,.../SERVICE", got {value!r}'
    )
    if not isinstance(value, str):
        raise ConfigError(expected)
    try:
        parts = urlsplit(value)
        if parts.scheme in ("redis", "rediss"):
            ok = bool(parts.hostname) and (parts.port or 0) >= 0  # .port: ValueError if bad
            db = parts.path.strip("/")
        elif parts.scheme == "redis+sentinel":
            hosts = parts.netloc.rpartition("@")[2].split(",")
            ok = all(parse_address(key, host) for host in hosts)
            service, _, db = parts.path.strip("/").partition("/")
            ok = ok and bool(service)
        else:
            ok = False
    except (ValueError, ConfigError):
        ok = False
    if not ok or (db and not db.isdigit()):
        raise ConfigError(expected)
    return value


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _journal(key: str, value: object) -> str:
    text = _text(key, value)
    if text in ("auto", "off") or urlsplit(text).scheme == "":
        return text
    return _lock_url(key, text)


def _networks(key: str, value: object) -> tuple[IPNetwork, ...]:
    """A list of networks ("10.0.0.0/8"), or one comma-separated string of them."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{key}: expected a list of networks, got {value!r}")
    try:
        return tuple(ipaddress.ip_network(str(item).strip()) for item in items)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


# What a backend's table may set: how to reach it and how MOVE is emulated in front of it.
BACKEND_KEYS = (
    "upstream", "upstream_tls", "upstream_ca", "upstream_server_name", "upstream_client_cert",
    "upstream_client_key", "upstream_tls_verify", "upstream_proxy_protocol", "upstream_id",
    "connect_timeout", "no_uidplus", "move_chunk_size", "rollback", "rollback_master_user",
    "rollback_master_password", "special_use", "special_use_map",
)  # fmt: skip
ROUTING_KEYS = ("backends", "routes", "route_lookup")


def _tables(key: str, value: object) -> dict[str, dict[str, object]]:
    """Backends by name, each a table of :data:`BACKEND_KEYS` (made Configs by :func:`build`)."""
    if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
        raise ConfigError(f"{key}: expected a table of tables ([backends.NAME]), got {value!r}")
    for name, table in value.items():
        for item in table:
            if item not in BACKEND_KEYS:
                raise ConfigError(f"{key}.{name}.{item}: not a backend setting")
        if "upstream" not in table:
            raise ConfigError(f'{key}.{name}.upstream: required ("HOST:PORT")')
    return value


def _route_table(key: str, value: object) -> dict[str, str]:
    """User (exact), "@domain" or "*" (everyone else): the name of a backend."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f'{key}: expected a table of "user" = "backend", got {value!r}')
    return {name.lower() if name.startswith("@") else name: v for name, v in value.items()}


def _special_use_map(key: str, value: object) -> dict[str, tuple[str, ...]]:
    """Attribute (``Trash``...) to the mailbox names that have it."""
    if not isinstance(value, dict) or not all(
        isinstance(names, list) and all(isinstance(n, str) and n for n in names)
        for names in value.values()
    ):
        raise ConfigError(f'{key}: expected a table of Attribute = ["name", ...], got {value!r}')
    for attribute in value:
        if attribute not in ATTRIBUTES:
            raise ConfigError(f"{key}.{attribute}: not a special-use attribute {ATTRIBUTES}")
    return {attribute: tuple(names) for attribute, names in value.items()}


def _http_url(key: str, value: object) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
        raise ConfigError(f'{key}: expected an "http://..." URL, got {value!r}')
    if not urlsplit(value).hostname:
        raise ConfigError(f'{key}: expected an "http://HOST[:PORT]/PATH" URL, got {value!r}')
    return value


_PARSERS: dict[str, Callable[[str, object], Any]] = {
    "listen": parse_address,
    "listen_tls": parse_address,
    "upstream": parse_address,
    "connect_timeout": _number(float, 0.1),
    "log_level": _choice(LOG_LEVELS),
    "log_format": _choice(LOG_FORMATS),
    "metrics": parse_address,
    "max_line_length": _number(int, 1024),
    "max_mailbox_literal": _number(int, 1),
    "max_set_bytes": _number(int, 64),
    "drain_timeout": _number(float, 0.0),
    "no_uidplus": _choice(NO_UIDPLUS_POLICIES),
    "tls_cert": _file,
    "tls_key": _file,
    "require_tls": _bool,
    "tls_handshake_timeout": _number(float, 0.1),
    "upstream_tls": _choice(UPSTREAM_TLS_MODES),
    "upstream_ca": _file,
    "upstream_server_name": _text,
    "upstream_client_cert": _file,
    "upstream_client_key": _file,
    "upstream_tls_verify": _bool,
    "proxy_protocol": _bool,
    "proxy_protocol_trusted": _networks,
    "upstream_proxy_protocol": _bool,
    "upstream_id": _bool,
    "compress": _bool,
    "special_use": _bool,
    "special_use_map": _special_use_map,
    "max_connections": _number(int, 1),
    "max_connections_per_address": _number(int, 1),
    "login_timeout": _number(float, 1.0),
    "line_timeout": _number(float, 1.0),
    "move_chunk_size": _number(int, 0),
    "rollback": _choice(ROLLBACK_MODES),
    "rollback_master_user": _text,
    "rollback_master_password": _text,
    "rollback_timeout": _number(float, 1.0),
    "move_step_timeout": _number(float, 0.1),
    "move_lock": _lock_url,
    "move_lock_timeout": _number(float, 0.0),
    "move_lock_lease": _number(float, 1.0),
    "move_lock_unavailable": _choice(MOVE_LOCK_UNAVAILABLE),
    "backends": _tables,
    "routes": _route_table,
    "route_lookup": _http_url,
    "route_lookup_timeout": _number(float, 0.1),
    "route_cache_ttl": _number(float, 0.0),
    "login_attempts": _number(int, 1),
    "login_failure_delay": _number(float, 0.0),
    "journal": _journal,
    "journal_unavailable": _choice(JOURNAL_UNAVAILABLE),
    "journal_fsync": _bool,
}
assert set(_PARSERS) == {f.name for f in fields(Config)}


def build(values: dict[str, object]) -> Config:
    """Validate raw values (from TOML and flags) into a Config."""
    for key in values:
        if key not in _PARSERS:
            raise ConfigError(f"{key}: unknown setting")
    if values.get("backends"):
        return _routing(values)
    for key in ROUTING_KEYS:
        if key in values:
            raise ConfigError(f"{key}: needs backends ([backends.NAME] tables)")
    if "upstream" not in values:
        raise ConfigError("upstream: required (set it in the config file or with --upstream)")
    if "listen" not in values and "listen_tls" not in values:
        raise ConfigError("listen: required, or listen_tls (set one with --listen/--listen-tls)")
    kwargs = {key: _PARSERS[key](key, value) for key, value in values.items()}
    for cert, key in (("tls_cert", "tls_key"), ("upstream_client_cert", "upstream_client_key")):
        if (cert in kwargs) != (key in kwargs):
            missing = key if cert in kwargs else cert
            raise ConfigError(
                f"{missing}: required together with {cert if missing == key else key}"
            )
    if "listen_tls" in kwargs and "tls_cert" not in kwargs:
        raise ConfigError("tls_cert: required for listen_tls (and tls_key)")
    kwargs.setdefault("require_tls", "tls_cert" in kwargs)
    if kwargs.get("proxy_protocol") and not kwargs.get("proxy_protocol_trusted"):
        raise ConfigError("proxy_protocol_trusted: required with proxy_protocol (never guessed)")
    if kwargs.get("rollback") == "master":
        for key in ("rollback_master_user", "rollback_master_password"):
            if not kwargs.get(key):
                raise ConfigError(f'{key}: required with rollback = "master"')
    return Config(**kwargs)


def _routing(values: dict[str, object]) -> Config:
    """Routing mode: each backend a whole Config (the top level's settings and its own), the
    routes naming only those backends."""
    if "upstream" in values:
        raise ConfigError("upstream: not used with backends (set each backend's upstream)")
    if not values.get("routes") and not values.get("route_lookup"):
        raise ConfigError("routes: required with backends, or route_lookup")
    tables = _tables("backends", values["backends"])
    common = {k: v for k, v in values.items() if k not in ROUTING_KEYS}
    backends: dict[str, Config] = {}
    for name, table in tables.items():
        try:
            backends[name] = build(common | table)
        except ConfigError as exc:
            raise ConfigError(f"backends.{name}.{exc}") from None
    routes = _route_table("routes", values.get("routes", {}))
    for user, backend in routes.items():
        if backend not in backends:
            raise ConfigError(f"routes: {user!r} names {backend!r}, which is not in backends")
    top = build(common | {"upstream": "0.0.0.0:0"})  # validates the rest, once
    return replace(
        top,
        upstream=None,
        backends=backends,
        routes=routes,
        **{k: _PARSERS[k](k, values[k]) for k in ("route_lookup",) if k in values},
    )


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
        description="IMAP proxy that adds MOVE (RFC 6851) in front of servers that lack it. "
        "Every flag overrides the config file key of the same name (see config.example.toml).",
        epilog="imapmoveproxy probe --help: will the proxy work in front of a given server?",
    )
    add = parser.add_argument
    add("--version", action="version", version=f"%(prog)s {__version__}")
    add("--listen", help="plain IMAP address for clients, HOST:PORT (STARTTLS if a cert is set)")
    add("--listen-tls", help="implicit-TLS address for clients, HOST:PORT")
    add("--log-level", choices=LOG_LEVELS, help="log verbosity")
    add("--log-format", choices=LOG_FORMATS, help="log lines as text or JSON")
    add("--metrics", help="serve /metrics, /healthz and /readyz on HOST:PORT")
    add("--check-config", action="store_true", help="validate the configuration and exit")
    add("--move-step-timeout", type=float, help="seconds a MOVE waits for one upstream reply")
    add("--rollback", choices=ROLLBACK_MODES, help="whose login removes a failed MOVE's copies")
    add("--move-lock", help="Redis/Valkey URL of the MOVE lock shared by every replica")
    add("--move-lock-timeout", type=float, help="seconds a MOVE waits for its mailbox's lock")
    add("--move-lock-lease", type=float, help="seconds a shared lock outlives a dead replica")
    add(
        "--move-lock-unavailable",
        choices=MOVE_LOCK_UNAVAILABLE,
        help="MOVE when the lock service is unreachable",
    )
    add("--journal", help='where MOVEs are recorded: "auto", "off", a SQLite path, redis://...')
    add(
        "--journal-no-fsync",
        dest="journal_fsync",
        action="store_false",
        default=None,
        help="SQLite journal: survive the process's death, not the machine's (faster)",
    )
    add(
        "--journal-unavailable",
        choices=JOURNAL_UNAVAILABLE,
        help="MOVE when the journal cannot be written",
    )
    add("--tls-cert", help="certificate chain (PEM) shown to clients")
    add("--tls-key", help="private key (PEM) of --tls-cert")
    add(
        "--require-tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refuse LOGIN/AUTHENTICATE before STARTTLS (default: on with a certificate)",
    )
    add(
        "--proxy-protocol",
        action="store_const",
        const=True,
        default=None,
        help="expect a PROXY v1/v2 header on client connections",
    )
    add("--proxy-protocol-trusted", help="networks allowed to send it, comma-separated")
    add_upstream_arguments(parser)
    return parser  # fmt: skip


def add_upstream_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags about the upstream and how MOVE is emulated in front of it (shared with
    ``imapmoveproxy probe``), and ``--config``."""
    add = parser.add_argument
    add("--config", type=Path, help="TOML configuration file")
    add("--upstream", help="IMAP server to forward to, HOST:PORT")
    add("--connect-timeout", type=float, help="seconds to reach the upstream")
    add("--no-uidplus", choices=NO_UIDPLUS_POLICIES, help="MOVE over a server without UIDPLUS")
    add("--move-chunk-size", type=int, help="most messages one upstream COPY of a MOVE takes")
    add("--upstream-tls", choices=UPSTREAM_TLS_MODES, help="TLS to the upstream")
    add("--upstream-ca", help="CA bundle to verify the upstream (default: system store)")
    add("--upstream-server-name", help="name expected in the upstream's certificate")
    add("--upstream-client-cert", help="client certificate (PEM) for the upstream")
    add("--upstream-client-key", help="private key (PEM) of --upstream-client-cert")
    add(
        "--upstream-tls-no-verify",
        dest="upstream_tls_verify",
        action="store_const",
        const=False,
        default=None,
        help="do NOT verify the upstream's certificate (insecure)",
    )
    add(
        "--upstream-proxy-protocol",
        action="store_const",
        const=True,
        default=None,
        help="send a PROXY v2 header to the upstream (instead of ID x-originating-ip)",
    )
    add(
        "--no-upstream-id",
        dest="upstream_id",
        action="store_const",
        const=False,
        default=None,
        help="do not send the client's address in an ID command",
    )
    add(
        "--no-compress",
        dest="compress",
        action="store_const",
        const=False,
        default=None,
        help="do not offer COMPRESS=DEFLATE to clients",
    )
    add(
        "--no-special-use",
        dest="special_use",
        action="store_const",
        const=False,
        default=None,
        help="do not add SPECIAL-USE attributes to LIST/LSUB where the upstream lacks them",
    )


def from_environment(environ: Mapping[str, str]) -> dict[str, object]:
    """``IMAPMOVEPROXY_<KEY>`` variables: values in TOML syntax (numbers, true/false), or else
    taken as plain strings (so ``IMAPMOVEPROXY_LISTEN=0.0.0.0:143`` needs no quotes)."""
    values: dict[str, object] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or not raw:
            continue
        key = name.removeprefix(ENV_PREFIX).lower()
        if key not in _PARSERS:
            raise ConfigError(f"{key}: unknown setting (from environment variable {name})")
        try:
            values[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = raw
    return values


def merged_values(args: dict[str, object], environ: Mapping[str, str]) -> dict[str, object]:
    """Raw values from the file ``args["config"]`` names, the environment and the other parsed
    flags ``args`` (``None``: not given), in rising precedence."""
    config_file = args.pop("config")
    values = load_file(Path(str(config_file))) if config_file else {}
    values.update(from_environment(environ))
    values.update({key: value for key, value in args.items() if value is not None})
    return values


def from_arguments(argv: list[str] | None, environ: Mapping[str, str]) -> tuple[Config, bool]:
    """The configuration from file, environment and flags (in rising precedence), and whether
    only a check was asked for (--check-config)."""
    args = vars(argument_parser().parse_args(argv))
    check_only = args.pop("check_config")
    return build(merged_values(args, environ)), check_only
