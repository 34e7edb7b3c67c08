"""One configuration system for every front end (`gaffer run`, `gaffer serve`, `gobuildcache`, and what comes next).

Each setting is declared once, in SETTINGS: its name, parser (units from gaffer.units), default, flag, `GAFFER_*`
variable, `gaffer.toml` key and help text. Flags, `--help` texts and the documentation tables are read from it,
and `resolve` applies one precedence everywhere:

    command-line flag > environment variable > gaffer.toml > default

A front end may also read variables of its own (gobuildcache reads the Go program's `CACHE_DIR`, `BACKEND_TYPE`,
`GOBUILDCACHE_*`, ...): they are aliases of the setting, read before its `GAFFER_*` variable. gaffer.toml comes
from two places, the nearer one winning key by key: the user's config dir ($XDG_CONFIG_HOME/gaffer/gaffer.toml,
else ~/.config/gaffer/gaffer.toml), then the project's (beside the graph for `run` and `clean`; the nearest one
from the working directory upward for `cache`, `serve` and `gobuildcache`). A bad value from any source is a one-line UserError
naming that source: the flag, the variable, or `file: [section] key`.

Imported by gobuildcache before its capabilities line: standard library only at the top, and no `typing`,
`dataclasses` or `tomllib` unless a gaffer.toml exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from gaffer.errors import UserError
from gaffer.units import parse_duration, parse_size

TYPE_CHECKING = False  # not `typing`'s: importing typing (or pathlib) costs gobuildcache start-up time
if TYPE_CHECKING:
    import argparse
    from typing import Any

RUN, SERVE, GOCACHE, WORKER, CC = "run", "serve", "gocache", "worker", "cc"
MAX_REMOTE_TIMEOUT_S = 24 * 3600.0
DEFAULT_MAX_SIZE = 10 * 1024**3
# The cache URL schemes gaffer opens; kept equal to gaffer.cache.urls._SCHEMES (a test checks), not imported
# from there, to keep gobuildcache's start-up light.
TIER_SCHEMES = ("disk", "s3", "gs", "azblob", "redis", "rediss", "http", "https", "grpc", "grpcs")
TOML_NAME = "gaffer.toml"

Parser = Callable[[object, str, "str | None"], object]  # (value, where it came from, base dir for paths) -> value


# -- parsers: each takes a flag's or variable's text or a TOML value, and names `where` in its error ---------------


def shown(value: object) -> str:
    """A setting's value as its user wrote it: a gaffer.toml `true` is `true` in a message, not Python's `True`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def parse_bool(value: object, where: str, base: str | None = None) -> bool:
    """The one boolean parser: TOML's true/false, or 1/0, true/false, yes/no, on/off in text."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None  # TOML's `sandbox = 1` too
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise UserError(f"{where}: {shown(value)} is not a boolean (use true or false, 1 or 0)")


def _scalar(value: object, where: str) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{where}: {shown(value)} must be a string or a number")
    return value if isinstance(value, (str, int)) else str(value)


def _size(value: object, where: str, base: str | None = None) -> int:
    return parse_size(_scalar(value, where), where)


def _timeout(value: object, where: str, base: str | None = None) -> float:
    """A remote request's bound: positive, and small enough for every client's socket and deadline arithmetic."""
    seconds = parse_duration(_scalar(value, where), where)
    if not 0 < seconds <= MAX_REMOTE_TIMEOUT_S:
        raise UserError(f"{where}: the timeout must be more than 0 and at most a day, not {seconds:g}s")
    return seconds


def _count(noun: str) -> Parser:
    def parse(value: object, where: str, base: str | None = None) -> int:
        try:
            n = int(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else 0
        except ValueError:
            n = 0
        if n < 1:
            raise UserError(f"{where}: {shown(value)} is not a positive number of {noun}")
        return n

    return parse


def _path(value: object, where: str, base: str | None = None) -> str:
    """A path (a string: pathlib costs start-up time); relative to the gaffer.toml that names it, else to the
    working directory."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: {shown(value)} is not a path")
    return os.path.join(base or "", os.path.expanduser(value))


def _text(value: object, where: str, base: str | None = None) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: {shown(value)} must be a string")
    return value.strip()


def _log_target(value: object, where: str, base: str | None = None) -> str:
    """A debug log: a switch as parse_bool reads it (gaffer.toml's `true`; on means stderr, "1"), "stderr", or a
    file to append to (relative to the gaffer.toml that names it, as every path there)."""
    if not isinstance(value, (bool, str)):
        raise UserError(f"{where}: {shown(value)} must be true, false, or a file to append to")
    if isinstance(value, str) and value.strip().lower() == "stderr":
        return "1"
    try:
        return "1" if parse_bool(value, where) else ""
    except UserError:
        return _path(value, where, base)


def _address(value: object, where: str, base: str | None = None) -> tuple[str, int]:
    """HOST:PORT to listen on or connect to ([::1]:9092 for IPv6; port 0: any free port). A URL is refused here
    (no host name holds a `/`): taken as a host, it would fail later, as a lookup retried forever or a bind."""
    text = _text(value, where)
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or "/" in host or not port.isdigit() or int(port) > 65535:
        url = ", not a URL" if "://" in text else ""
        raise UserError(f"{where}: {text!r}: expected HOST:PORT{url} (example: 127.0.0.1:9092, port 0 for any)")
    return host, int(port)


def _choice(*choices: str) -> Parser:
    def parse(value: object, where: str, base: str | None = None) -> str:
        text = value.strip().lower() if isinstance(value, str) else None
        if text not in choices:
            raise UserError(f"{where}: {shown(value)} is not one of {', '.join(choices)}")
        return text

    return parse


def check_scheme(url: str, where: str) -> str:
    """The scheme check every front end can afford at start-up; the rest of a URL is checked by
    gaffer.cache.urls.checked_url (run, serve) or when its tier is first used (gobuildcache)."""
    name, sep, _ = url.partition("://")
    if not sep or name.lower() not in TIER_SCHEMES:
        what = f"unknown scheme {name!r}" if sep else "not a URL"
        raise UserError(f"{where}: cache URL {url}: {what} (supported: {', '.join(s + '://' for s in TIER_SCHEMES)})")
    return url


FILE_PARAMETERS = ("token_file", "ca")  # the URL parameters that name files


def _anchored(url: str, base: str | None) -> str:
    """A URL from gaffer.toml with a relative token_file= or ca= made relative to that file, as every path there:
    a command run in a subdirectory (go, a compile in a build directory) finds it all the same."""
    if not base or not any(f"{name}=" in url for name in FILE_PARAMETERS):
        return url
    from urllib.parse import quote, unquote  # only here: it imports re, which gobuildcache's start-up avoids

    head, _, query = url.partition("?")
    pairs = []
    for pair in query.split("&"):
        key, sep, value = pair.partition("=")
        path = os.path.expanduser(unquote(value))
        if key in FILE_PARAMETERS and value and not os.path.isabs(path):
            value = quote(os.path.join(base, path), safe="/")
        pairs.append(key + sep + value)
    return f"{head}?{'&'.join(pairs)}"


def _url(value: object, where: str, base: str | None = None) -> str:
    return check_scheme(_anchored(_text(value, where), base), where)


def _remote_url(value: object, where: str, base: str | None = None) -> str:
    """A remote execution service: grpc:// or grpcs:// only (the rest is checked as a cache URL's is)."""
    url = _anchored(_text(value, where), base)
    if url.partition("://")[0].lower() not in ("grpc", "grpcs"):
        raise UserError(f"{where}: remote URL {url}: expected grpc://HOST:PORT[/INSTANCE] or grpcs://HOST[:PORT]"
                        "[/INSTANCE]")
    return url


def _urls(value: object, where: str, base: str | None = None) -> list[str]:
    """URLs, nearest first: a repeated flag's list, a comma-separated variable, a TOML string or list."""
    if isinstance(value, str):
        value = [u.strip() for u in value.split(",") if u.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UserError(f"{where}: must be a URL or a list of URLs")
    return [check_scheme(_anchored(url, base), where) for url in value]


def _list(value: object, where: str) -> list[str]:
    """A repeated flag's list, a comma-separated variable, a TOML string or list of strings."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise UserError(f"{where}: must be a string or a list of strings")
    return [v.strip() for v in value]


def _pairs(value: object, where: str, base: str | None = None) -> list[str]:
    """KEY=VALUE platform properties (a key may repeat: the worker offers each value)."""
    items = _list(value, where)
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{where}: {item!r}: expected KEY=VALUE (example: pool=large)")
    return items


def _names(value: object, where: str, base: str | None = None) -> list[str]:
    """Environment variable names."""
    items = _list(value, where)
    for item in items:
        if "=" in item or not item.replace("_", "a").isalnum():
            raise UserError(f"{where}: {item!r} is not a variable name (example: GOCACHE)")
    return items


# -- the table --------------------------------------------------------------------------------------------------


def _default_cache_dir() -> str:
    """gaffer's local cache: $XDG_CACHE_HOME/gaffer, else ~/.cache/gaffer."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "gaffer")


class Setting:
    """One setting: where each source names it, how its value is parsed, and what it defaults to per front end.
    A plain class: `dataclasses` would cost gobuildcache start-up time before its capabilities line."""

    __slots__ = ("aliases", "default", "default_text", "env", "flags", "fronts", "help", "kind", "metavar",
                 "name", "parse", "toml")

    def __init__(self, name: str, fronts: Sequence[str], *, toml: str, env: str, parse: Parser,
                 default: Mapping[str, object], default_text: Mapping[str, str], help: str, flags: Sequence[str] = (),
                 metavar: str = "", kind: str = "value", aliases: Mapping[str, Sequence[str]] | None = None) -> None:
        self.name = name  # the attribute of the resolved Settings
        self.fronts = tuple(fronts)  # the front ends that read it
        self.toml = toml  # "section.key" in gaffer.toml
        self.env = env  # the GAFFER_* variable
        self.aliases = dict(aliases or {})  # front end -> its own variables, read before `env`
        self.flags = tuple(flags)  # the option strings on the front ends with flags (run, serve)
        self.metavar = metavar
        self.kind = kind  # "value"; "list" (repeatable flag); "switch" (a flag without a value); "toggle" (a
        # switch with its --no- form, for a setting on by default)
        self.parse = parse
        self.default = dict(default)  # front end -> value, or a callable computing it (lazily: a home dir, CPUs)
        self.default_text = dict(default_text)  # front end -> the default as help and docs show it
        self.help = help

    def variables(self, front: str) -> tuple[str, ...]:
        """The variables `front` reads for this setting, the first set one winning."""
        return (*self.aliases.get(front, ()), self.env)

    def default_for(self, front: str) -> object:
        value = self.default.get(front, self.default.get("*"))
        return value() if callable(value) else value

    def shown_default(self, front: str) -> str:
        return self.default_text.get(front) or self.default_text["*"]

    @property
    def flag(self) -> str:
        """The flag as an error message names it: `-j/--jobs`, `--cache-dir`."""
        return "/".join(self.flags)


_CACHE_DIR_DEFAULT = "$XDG_CACHE_HOME/gaffer, else ~/.cache/gaffer"

SETTINGS: tuple[Setting, ...] = (
    # `gaffer run` (and clean, cache), with the cache settings gobuildcache shares
    Setting("cache_dir", (RUN, GOCACHE, CC), toml="cache.dir", env="GAFFER_CACHE_DIR", flags=("--cache-dir",),
            metavar="DIR", parse=_path, aliases={GOCACHE: ("CACHE_DIR",)},
            default={RUN: _default_cache_dir, CC: _default_cache_dir, GOCACHE: "/tmp/gobuildcache"},
            default_text={RUN: _CACHE_DIR_DEFAULT, CC: _CACHE_DIR_DEFAULT, GOCACHE: "/tmp/gobuildcache"},
            help="the local cache directory"),
    Setting("max_size", (RUN, CC), toml="cache.max_size", env="GAFFER_CACHE_MAX_SIZE", flags=("--cache-max-size",),
            metavar="SIZE", parse=_size, default={"*": DEFAULT_MAX_SIZE}, default_text={"*": "10GiB"},
            help="size bound of the local cache; least recently used entries are evicted beyond it"),
    Setting("remotes", (RUN, GOCACHE, CC), toml="cache.remote", env="GAFFER_CACHE", flags=("--cache",), metavar="URL",
            kind="list", parse=_urls, aliases={GOCACHE: ("GOBUILDCACHE_CACHE",)}, default={"*": list},
            default_text={"*": "none"},
            help="remote cache tiers behind the local one, nearest first (comma-separated in a variable): "
                 "s3://bucket/prefix?endpoint=http://127.0.0.1:7480&region=us-east-1, gs://bucket/prefix, "
                 "azblob://container/prefix?account=NAME, redis://127.0.0.1:6379/0, http://host:8080/prefix (Bazel HTTP cache), "
                 "grpc://host:9092/instance (REAPI)"),
    Setting("read_only", (RUN, GOCACHE, CC), toml="cache.read_only", env="GAFFER_CACHE_READ_ONLY",
            flags=("--cache-read-only",), kind="switch", parse=parse_bool,
            aliases={GOCACHE: ("GOBUILDCACHE_READ_ONLY",)}, default={"*": False}, default_text={"*": "false"},
            help="pull from remote tiers but never push to them (untrusted CI)"),
    Setting("timeout", (RUN, GOCACHE, CC), toml="cache.timeout", env="GAFFER_CACHE_TIMEOUT", flags=("--cache-timeout",),
            metavar="DURATION", parse=_timeout, aliases={GOCACHE: ("GOBUILDCACHE_TIMEOUT",)}, default={"*": 10.0},
            default_text={"*": "10s"},
            help="per-request timeout of remote tiers (a stuck one is dropped for the build)"),
    Setting("jobs", (RUN,), toml="run.jobs", env="GAFFER_JOBS", flags=("-j", "--jobs"), metavar="N",
            parse=_count("jobs"), default={RUN: lambda: os.cpu_count() or 1}, default_text={"*": "the CPU count"},
            help="tasks run at once"),
    Setting("sandbox", (RUN,), toml="run.sandbox", env="GAFFER_SANDBOX", flags=("--sandbox",), kind="switch",
            parse=parse_bool, default={"*": False}, default_text={"*": "false"},
            help="run every task in a fresh exec root holding only its declared inputs and its deps' outputs, "
                 "so an undeclared input fails the task (as on a remote worker)"),
    Setting("sandbox_keep", (RUN,), toml="run.sandbox_keep", env="GAFFER_SANDBOX_KEEP", parse=parse_bool,
            default={"*": False}, default_text={"*": "false"},
            help="keep a failed sandboxed task's exec root (under .gaffer/sandbox) to look into"),
    Setting("remote", (RUN, CC), toml="remote.url", env="GAFFER_REMOTE", flags=("--remote",), metavar="URL",
            parse=_remote_url, default={"*": None}, default_text={"*": "none: everything runs here"},
            help="run cacheable tasks (for gaffer cc and ld: the compiles and links that miss the cache) on this "
                 "REAPI execution service (gaffer serve with workers, or any REAPI server): "
                 "grpc://host:9092[/instance][?token_file=PATH], grpcs://..."),
    Setting("remote_download", (RUN,), toml="remote.download", env="GAFFER_REMOTE_DOWNLOAD",
            flags=("--remote-download",), metavar="all|minimal", parse=_choice("all", "minimal"),
            default={"*": "all"}, default_text={"*": "all"},
            help="which outputs of remote tasks come back to the workspace: all, or minimal (the targets' outputs "
                 "and what a task running here needs; the rest stays on the remote, recorded by digest)"),
    Setting("remote_fallback", (RUN,), toml="remote.fallback", env="GAFFER_REMOTE_FALLBACK",
            flags=("--remote-fallback",), kind="toggle", parse=parse_bool, default={"*": True},
            default_text={"*": "true"},
            help="run a task here when the remote is unreachable (one warning per build); "
                 "--no-remote-fallback makes that an error"),
    # `gaffer serve`
    Setting("dir", (SERVE,), toml="serve.dir", env="GAFFER_SERVE_DIR", flags=("--dir",), metavar="DIR",
            parse=_path, default={SERVE: lambda: os.path.join(_default_cache_dir(), "serve")},
            default_text={"*": "$XDG_CACHE_HOME/gaffer/serve, else ~/.cache/gaffer/serve"},
            help="the store directory; with --backend, a read-through cache of the backend's blobs"),
    Setting("backend", (SERVE,), toml="serve.backend", env="GAFFER_SERVE_BACKEND", flags=("--backend",),
            metavar="URL", parse=_url, default={SERVE: None}, default_text={"*": "none: the local store in --dir"},
            help="keep blobs and action results in this cache instead of --dir (s3://, gs://, azblob://, redis://, "
                 "http(s)://, grpc(s)://, disk://); several servers may share one"),
    Setting("serve_max_size", (SERVE,), toml="serve.max_size", env="GAFFER_SERVE_MAX_SIZE", flags=("--max-size",),
            metavar="SIZE", parse=_size, default={SERVE: DEFAULT_MAX_SIZE}, default_text={"*": "10GiB"},
            help="size bound of the store, all instances together; least recently used entries are evicted "
                 "beyond it"),
    Setting("memory", (SERVE,), toml="serve.memory", env="GAFFER_SERVE_MEMORY", flags=("--memory",),
            metavar="SIZE", parse=_size, default={SERVE: 256 * 1024**2}, default_text={"*": "256MiB"},
            help="in-memory cache of small blobs (0 turns it off)"),
    Setting("fsync", (SERVE,), toml="serve.fsync", env="GAFFER_SERVE_FSYNC", flags=("--fsync",),
            kind="switch", parse=parse_bool, default={"*": False}, default_text={"*": "false"},
            help="flush every entry to the device before acknowledging it, so it survives power loss too (without: "
                 "a killed server loses nothing acknowledged, a crashed machine may lose the last seconds' writes)"),
    Setting("grpc", (SERVE,), toml="serve.grpc", env="GAFFER_SERVE_GRPC", flags=("--grpc",), metavar="HOST:PORT",
            parse=_address, default={SERVE: None}, default_text={"*": "none"},
            help="serve REAPI v2 gRPC here (e.g. 127.0.0.1:9092; port 0: any free port)"),
    Setting("http", (SERVE,), toml="serve.http", env="GAFFER_SERVE_HTTP", flags=("--http",), metavar="HOST:PORT",
            parse=_address, default={SERVE: None}, default_text={"*": "none"},
            help="serve the Bazel HTTP cache protocol and /metrics here"),
    Setting("token_file", (SERVE,), toml="serve.token_file", env="GAFFER_SERVE_TOKEN_FILE", flags=("--token-file",),
            metavar="FILE", parse=_path, default={SERVE: None}, default_text={"*": "none"},
            help="require 'authorization: Bearer <the file's content>' on every request"),
    Setting("read_token_file", (SERVE,), toml="serve.read_token_file", env="GAFFER_SERVE_READ_TOKEN_FILE",
            flags=("--read-token-file",), metavar="FILE", parse=_path, default={SERVE: None},
            default_text={"*": "none"},
            help="a second token, in this file, that may read but not write (for builds of untrusted code)"),
    Setting("client_timeout", (SERVE,), toml="serve.client_timeout", env="GAFFER_SERVE_CLIENT_TIMEOUT",
            flags=("--client-timeout",), metavar="DURATION", parse=_timeout, default={SERVE: 60.0},
            default_text={"*": "60s"},
            help="an HTTP client that sends nothing for this long (idle, or in the middle of a request) is "
                 "disconnected"),
    Setting("threads", (SERVE,), toml="serve.threads", env="GAFFER_SERVE_THREADS", flags=("--threads",),
            metavar="N", parse=_count("threads"), default={SERVE: 32}, default_text={"*": "32"},
            help="threads doing the disk work of gRPC calls"),
    Setting("grace", (SERVE,), toml="serve.grace", env="GAFFER_SERVE_GRACE", flags=("--grace",),
            metavar="DURATION", parse=_timeout, default={SERVE: 30.0}, default_text={"*": "30s"},
            help="after a stop signal, how long calls in progress may take to finish before they are cancelled"),
    Setting("insecure", (SERVE,), toml="serve.insecure", env="GAFFER_SERVE_INSECURE", flags=("--insecure",),
            kind="switch", parse=parse_bool, default={"*": False}, default_text={"*": "false"},
            help="serve gRPC on a non-loopback address without a token (anyone reaching it may run commands on "
                 "the workers)"),
    Setting("bot_timeout", (SERVE,), toml="serve.bot_timeout", env="GAFFER_SERVE_BOT_TIMEOUT",
            flags=("--bot-timeout",), metavar="DURATION", parse=_timeout, default={SERVE: 15.0},
            default_text={"*": "15s"},
            help="a worker silent this long is gone and its actions are requeued; it is asked to call again "
                 "within a third of it"),
    Setting("unmatched_timeout", (SERVE,), toml="serve.unmatched_timeout", env="GAFFER_SERVE_UNMATCHED_TIMEOUT",
            flags=("--unmatched-timeout",), metavar="DURATION", parse=_timeout, default={SERVE: 60.0},
            default_text={"*": "60s"},
            help="after this long with no connected worker matching an action's platform, its clients are told "
                 "so (it stays queued)"),
    # `gaffer worker`
    Setting("server", (WORKER,), toml="worker.server", env="GAFFER_WORKER_SERVER", flags=("--server",),
            metavar="HOST:PORT", parse=_address, default={WORKER: None}, default_text={"*": "none (required)"},
            help="the gaffer serve (or other REAPI server with a Bots service) to take work from"),
    Setting("instance", (WORKER,), toml="worker.instance", env="GAFFER_WORKER_INSTANCE", flags=("--instance",),
            metavar="NAME", parse=_text, default={WORKER: ""}, default_text={"*": '""'},
            help="the server's instance name the worker serves"),
    Setting("max_jobs", (WORKER,), toml="worker.max_jobs", env="GAFFER_WORKER_MAX_JOBS", flags=("--max-jobs",),
            metavar="N", parse=_count("jobs"), default={WORKER: 1}, default_text={"*": "1"},
            help="actions run at once"),
    Setting("platform", (WORKER,), toml="worker.platform", env="GAFFER_WORKER_PLATFORM", flags=("--platform",),
            metavar="KEY=VALUE", kind="list", parse=_pairs, default={"*": list}, default_text={"*": "none"},
            help="a platform property to advertise beside OSFamily and ISA (comma-separated in a variable); "
                 "an action runs here only if all its platform properties are advertised"),
    Setting("no_link", (WORKER,), toml="worker.no_link", env="GAFFER_WORKER_NO_LINK", flags=("--no-link",),
            kind="switch", parse=parse_bool, default={"*": False}, default_text={"*": "false"},
            help="do not advertise linking=true: link actions go to other workers"),
    Setting("worker_dir", (WORKER,), toml="worker.dir", env="GAFFER_WORKER_DIR", flags=("--dir",), metavar="DIR",
            parse=_path, default={WORKER: lambda: os.path.join(_default_cache_dir(), "worker")},
            default_text={"*": "$XDG_CACHE_HOME/gaffer/worker, else ~/.cache/gaffer/worker"},
            help="the blob cache and the exec roots"),
    Setting("worker_max_size", (WORKER,), toml="worker.max_size", env="GAFFER_WORKER_MAX_SIZE",
            flags=("--max-size",), metavar="SIZE", parse=_size, default={WORKER: DEFAULT_MAX_SIZE},
            default_text={"*": "10GiB"},
            help="size bound of the blob cache; least recently used blobs are evicted beyond it"),
    Setting("env_pass", (WORKER,), toml="worker.env_pass", env="GAFFER_WORKER_ENV_PASS", flags=("--env-pass",),
            metavar="NAME", kind="list", parse=_names, default={"*": list}, default_text={"*": "none"},
            help="a variable of the worker's environment every action gets (comma-separated in a variable), "
                 "beside PATH, HOME, GOROOT and GOTOOLCHAIN; e.g. GOCACHE for a persistent Go build cache"),
    Setting("worker_token_file", (WORKER,), toml="worker.token_file", env="GAFFER_WORKER_TOKEN_FILE",
            flags=("--token-file",), metavar="FILE", parse=_path, default={WORKER: None}, default_text={"*": "none"},
            help="send 'authorization: Bearer <the file's content>' on every request"),
    Setting("worker_name", (WORKER,), toml="worker.name", env="GAFFER_WORKER_NAME", flags=("--name",),
            metavar="NAME", parse=_text, default={WORKER: ""}, default_text={"*": "<hostname>-<pid>"},
            help="the bot id the server shows (<hostname>-NAME)"),
    # `gaffer cc` / `gaffer ld` (the compiler launcher), with the cache settings above
    Setting("cc_dir", (CC,), toml="cc.dir", env="GAFFER_CC_DIR", parse=_path,
            default={CC: lambda: os.path.join(_default_cache_dir(), "cc")},
            default_text={"*": "$XDG_CACHE_HOME/gaffer/cc, else ~/.cache/gaffer/cc"},
            help="the launcher's own directory (private, 0700): stats, its stat cache, the daemon's socket"),
    Setting("base_dir", (CC,), toml="cc.base_dir", env="GAFFER_CC_BASEDIR", parse=_path, default={CC: ""},
            default_text={"*": "none"},
            help="absolute paths below this directory are keyed relative to the working directory, so checkouts "
                 "below it share cache entries (use -ffile-prefix-map too: see docs/cc.md)"),
    Setting("cc_debug", (CC,), toml="cc.debug", env="GAFFER_CC_DEBUG", parse=_log_target, default={CC: ""},
            default_text={"*": "off"},
            help="log why each compile hit, missed or was not cached: 1 for stderr, or a file to append to"),
    Setting("cc_preprocessor", (CC,), toml="cc.preprocessor", env="GAFFER_CC_PREPROCESSOR", parse=parse_bool,
            default={"*": False}, default_text={"*": "false"},
            help="when direct mode misses, try the key of the preprocessed source (-E) before compiling: hits "
                 "after comment-only edits and for __DATE__ users with SOURCE_DATE_EPOCH, at the cost of a "
                 "preprocessor run on every miss"),
    # gobuildcache (the Go program's variables are its aliases)
    Setting("backend_type", (GOCACHE,), toml="gocache.backend", env="GAFFER_GOCACHE_BACKEND",
            parse=_choice("disk", "s3"), aliases={GOCACHE: ("BACKEND_TYPE",)}, default={GOCACHE: "disk"},
            default_text={"*": "disk"},
            help="disk, or s3 (an S3 tier behind the local one; other tiers are named by URL in the cache setting)"),
    Setting("s3_bucket", (GOCACHE,), toml="gocache.s3_bucket", env="GAFFER_GOCACHE_S3_BUCKET", parse=_text,
            aliases={GOCACHE: ("S3_BUCKET",)}, default={GOCACHE: ""}, default_text={"*": "none (required for s3)"},
            help="the bucket of the s3 backend"),
    Setting("s3_prefix", (GOCACHE,), toml="gocache.s3_prefix", env="GAFFER_GOCACHE_S3_PREFIX", parse=_text,
            aliases={GOCACHE: ("S3_PREFIX",)}, default={GOCACHE: ""}, default_text={"*": '""'},
            help="the key prefix in the bucket, e.g. go/"),
    Setting("s3_tmp_dir", (GOCACHE,), toml="gocache.s3_tmp_dir", env="GAFFER_GOCACHE_S3_TMP_DIR", parse=_path,
            aliases={GOCACHE: ("S3_TMP_DIR",)}, default={GOCACHE: "/tmp/gobuildcache-s3"},
            default_text={"*": "/tmp/gobuildcache-s3"}, help="the local tier of the s3 backend"),
    Setting("debug", (GOCACHE,), toml="gocache.debug", env="GAFFER_GOCACHE_DEBUG", parse=parse_bool,
            aliases={GOCACHE: ("DEBUG",)}, default={GOCACHE: False}, default_text={"*": "false"},
            help="one stderr line per request, and the stats line at close"),
    Setting("prefetch", (GOCACHE,), toml="gocache.prefetch", env="GAFFER_GOCACHE_PREFETCH", parse=parse_bool,
            aliases={GOCACHE: ("GOBUILDCACHE_PREFETCH",)}, default={GOCACHE: True}, default_text={"*": "true"},
            help="with a remote tier: fetch the entries the previous go command of the module used, many at a "
                 "time, when the local tier lacks them"),
    Setting("stats", (GOCACHE,), toml="gocache.stats", env="GAFFER_GOCACHE_STATS", parse=parse_bool,
            aliases={GOCACHE: ("GOBUILDCACHE_STATS",)}, default={GOCACHE: False}, default_text={"*": "false"},
            help="the stats line at close, without the debug lines"),
    # `gaffer cc`: the compiler launcher's daemon
    Setting("cc_idle", (CC,), toml="cc.idle", env="GAFFER_CC_IDLE", parse=_timeout, default={CC: 600.0},
            default_text={"*": "10min"}, help="how long the launcher's daemon stays up without a compile"),
    Setting("cc_local_jobs", (CC,), toml="cc.local_jobs", env="GAFFER_CC_LOCAL_JOBS", parse=_count("jobs"),
            default={CC: lambda: os.cpu_count() or 1}, default_text={"*": "the number of cores"},
            help="with --remote: how many compiler processes run here at once (dependency passes, links, "
                 "fallbacks), across every build of this user"),
    Setting("cc_remote_wait", (CC,), toml="cc.remote_wait", env="GAFFER_CC_REMOTE_WAIT", parse=_timeout,
            default={CC: 10.0}, default_text={"*": "10s"},
            help="with --remote: how long a compile may stay queued (no matching worker free) before it runs here"),
    Setting("cc_shared_fs", (CC,), toml="cc.shared_fs", env="GAFFER_CC_SHARED_FS", parse=_text, default={CC: ""},
            default_text={"*": "none: inputs are uploaded"},
            help="with --remote: the name of a shared filesystem the workers started with --platform "
                 "gaffer-shared-fs=NAME see at the same paths: compiles run in place there, nothing is uploaded "
                 "(see docs/cc.md for when that is safe)"),
)


def settings_of(front: str) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if front in s.fronts)


def setting(name: str) -> Setting:
    return next(s for s in SETTINGS if s.name == name)


# -- resolution -------------------------------------------------------------------------------------------------


class Settings:
    """A front end's resolved settings, as attributes, and where each came from (`source`; None: the default)."""

    def __init__(self, values: dict[str, object], sources: dict[str, str | None]) -> None:
        self.__dict__.update(values)
        self.sources = sources

    def __getattr__(self, name: str) -> Any:  # for type checkers: every setting is an attribute
        raise AttributeError(name)

    if TYPE_CHECKING:  # a front end may refine a value it has read (`gaffer run`'s cache_dir becomes a Path)
        def __setattr__(self, name: str, value: Any) -> None: ...


def user_config_path(env: Mapping[str, str] = os.environ) -> str:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "gaffer", TOML_NAME)


def nearest_toml(start: str) -> str | None:
    """The gaffer.toml in `start` or the nearest directory above it (`serve`, `gobuildcache`)."""
    directory = os.path.abspath(start)
    while True:
        candidate = os.path.join(directory, TOML_NAME)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def config_files(project: str | None, env: Mapping[str, str] = os.environ) -> list[str]:
    """The gaffer.toml files to read, farthest first: the user's, then the project's (which wins)."""
    return [p for p in (user_config_path(env), project) if p is not None and os.path.isfile(p)]


def resolve(front: str, flags: Mapping[str, object], env: Mapping[str, str], files: Iterable[str]) -> Settings:
    """`front`'s settings from the four layers. `flags` holds the parsed flags by setting name (None, False or
    an empty list: not given); `files` are gaffer.toml files, farthest first."""
    toml: dict[str, tuple[object, str, str]] = {}  # "section.key" -> (value, where, the file's directory)
    for path in files:
        for key, (raw, place) in _read_toml(path).items():
            toml[key] = (raw, place, os.path.dirname(os.path.abspath(path)))
    values: dict[str, object] = {}
    sources: dict[str, str | None] = {}
    for s in settings_of(front):
        given = flags.get(s.name)
        if given is not None and (s.kind == "toggle" or given not in (False, [])):
            where: str | None = s.flag
            value = s.parse(given, s.flag, None)
        else:
            where = next((v for v in s.variables(front) if _is_set(env, v, s)), None)
            if where is not None:
                value = s.parse(env[where], where, None)
            elif s.toml in toml:
                raw, where, base = toml[s.toml]
                value = s.parse(raw, where, base)
            else:
                value = s.default_for(front)
        values[s.name] = value
        sources[s.name] = where
    return Settings(values, sources)


def load_settings(workspace: str | os.PathLike[str] | None, flags: Mapping[str, object],
                  env: Mapping[str, str] = os.environ) -> Settings:
    """`gaffer run`'s settings (and clean's and cache's): the project's gaffer.toml is the one beside the graph."""
    from pathlib import Path

    s = resolve(RUN, flags, env, config_files(os.path.join(workspace, TOML_NAME) if workspace else None, env))
    s.cache_dir = Path(s.cache_dir)
    check_urls(s.remotes, s.sources["remotes"])
    if s.remote is not None:
        check_urls([s.remote], s.sources["remote"])
    return s


def load_nearest(front: str, flags: Mapping[str, object], env: Mapping[str, str] = os.environ,
                 cwd: str = ".") -> Settings:
    """The settings of a front end without a graph (`serve`, `gobuildcache`): the project's gaffer.toml is the
    nearest one from `cwd` upward."""
    return resolve(front, flags, env, config_files(nearest_toml(cwd), env))


def check_urls(urls: Iterable[str], where: str | None) -> None:
    """Check each URL in full (its scheme's parameters and shape) at start, even if no tier is ever opened."""
    if not urls:  # a local build: nothing to check, nor the checker to import
        return
    from gaffer.cache.urls import checked_url

    for url in urls:
        try:
            checked_url(url)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None


def _is_set(env: Mapping[str, str], name: str, s: Setting) -> bool:
    """An empty variable is unset, except for a list, where it says "none" (GAFFER_CACHE= drops gaffer.toml's)."""
    return name in env if s.kind == "list" else bool(env.get(name, "").strip())


def _read_toml(path: str) -> dict[str, tuple[object, str]]:
    """{"section.key": (value, "file: [section] key")}; an unknown section or key is the user's mistake."""
    import tomllib

    try:
        with open(path, encoding="utf-8") as f:
            doc = tomllib.loads(f.read())
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    known: dict[str, list[str]] = {}
    for s in SETTINGS:
        section, _, key = s.toml.partition(".")
        known.setdefault(section, []).append(key)
    found: dict[str, tuple[object, str]] = {}
    for section, table in doc.items():
        if section not in known or not isinstance(table, dict):
            raise UserError(f"{path}: unknown section [{section}] (known: {', '.join(sorted(known))})")
        for key, value in table.items():
            if key not in known[section]:
                raise UserError(f"{path}: [{section}] unknown setting {key!r} "
                                f"(known: {', '.join(sorted(known[section]))})")
            found[f"{section}.{key}"] = (value, f"{path}: [{section}] {key}")
    return found


# -- what front ends and docs show ------------------------------------------------------------------------------


def add_flags(parser: argparse.ArgumentParser, front: str, names: Iterable[str] | None = None) -> None:
    """The flags of the named settings (default: all of `front`'s), their help from the table. Their argparse
    defaults are None: `resolve` fills them in."""
    for s in settings_of(front) if names is None else (setting(n) for n in names):
        if not s.flags:  # set by its variable or gaffer.toml only
            continue
        repeat = "; repeatable" if s.kind == "list" else ""
        text = f"{s.help} (default: {s.shown_default(front)}{repeat}; env {s.env})".replace("%", "%%")
        if s.kind == "switch":
            parser.add_argument(*s.flags, dest=s.name, action="store_true", help=text)
        elif s.kind == "toggle":
            import argparse

            parser.add_argument(*s.flags, dest=s.name, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        else:
            parser.add_argument(*s.flags, dest=s.name, metavar=s.metavar, help=text,
                                action="append" if s.kind == "list" else "store")


def environment_help(front: str, names: Iterable[str] | None = None) -> str:
    """The part of a front end's help that names each setting's variables and gaffer.toml key; with flags (whose
    help says the rest) a table, without them each setting's help and default too."""
    chosen = settings_of(front) if names is None else tuple(setting(n) for n in names)
    rows = [(", ".join(s.variables(front)), s.flags[-1] if s.flags and front != GOCACHE else "",
             "[{}] {}".format(*s.toml.split("."))) for s in chosen]
    if front != GOCACHE:
        widths = [max(len(row[i]) for row in rows) + 2 for i in (0, 1)]
        return "".join(f"  {v:<{widths[0]}}{f:<{widths[1]}}{t}\n" for v, f, t in rows)
    import textwrap  # not for the table every `gaffer run` builds (its import compiles regular expressions)

    return "".join(
        f"  {v} (gaffer.toml {t})\n" + textwrap.fill(f"{s.help} (default: {s.shown_default(front)})", 110,
                                                      initial_indent=" " * 6, subsequent_indent=" " * 6,
                                                      break_on_hyphens=False, break_long_words=False) + "\n"
        for (v, _, t), s in zip(rows, chosen, strict=True))
