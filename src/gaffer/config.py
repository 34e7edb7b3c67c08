"""Settings shared by the front ends, with one precedence everywhere:
command-line flag > `GAFFER_*` environment variable > `gaffer.toml` (workspace root, then the user config
dir) > default.

gaffer.toml:
    [cache]
    dir = "/var/cache/gaffer"          # GAFFER_CACHE_DIR, --cache-dir
    max_size = "10GiB"                 # GAFFER_CACHE_MAX_SIZE, --cache-max-size
    remote = ["s3://bucket/prefix"]    # GAFFER_CACHE (comma-separated), --cache (repeatable)
    read_only = false                  # GAFFER_CACHE_READ_ONLY, --cache-read-only
    timeout = "10s"                    # GAFFER_CACHE_TIMEOUT, --cache-timeout (per remote request)
    [run]
    jobs = 8                           # GAFFER_JOBS, -j
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gaffer.cache.disk import DEFAULT_MAX_SIZE, default_cache_dir
from gaffer.errors import UserError
from gaffer.units import parse_duration, parse_size

DEFAULT_REMOTE_TIMEOUT_S = 10.0
MAX_REMOTE_TIMEOUT_S = 24 * 3600.0
_KNOWN = {"cache": {"dir", "max_size", "remote", "read_only", "timeout"}, "run": {"jobs"}}


@dataclass
class Settings:
    cache_dir: Path = field(default_factory=default_cache_dir)
    max_size: int = DEFAULT_MAX_SIZE
    remotes: list[str] = field(default_factory=list)
    read_only: bool = False
    timeout: float = DEFAULT_REMOTE_TIMEOUT_S
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "gaffer" / "gaffer.toml"


def load_settings(workspace: Path | None, flags: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> Settings:
    """Merge the layers. `flags` holds only the flags the user gave (None for the others)."""
    s = Settings()
    files = [user_config_path()] + ([workspace / "gaffer.toml"] if workspace else [])
    for path in files:  # later files (the workspace's) override earlier ones (the user's)
        if path.is_file():
            _apply_toml(s, path)
    _apply_env(s, env)
    _apply_flags(s, flags)
    if s.remotes:
        from gaffer.cache.urls import checked_url

        for url in s.remotes:
            checked_url(url)
    return s


def _apply_toml(s: Settings, path: Path) -> None:
    import tomllib

    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    for section, values in doc.items():
        if section not in _KNOWN or not isinstance(values, dict):
            raise UserError(f"{path}: unknown section [{section}] (known: {', '.join(sorted(_KNOWN))})")
        for key, value in values.items():
            if key not in _KNOWN[section]:
                raise UserError(f"{path}: [{section}] unknown setting {key!r} (known: {', '.join(sorted(_KNOWN[section]))})")
            where = f"{path}: [{section}] {key}"
            if section == "run":
                s.jobs = _jobs(value, where)
            elif key == "dir":
                s.cache_dir = _path(value, where, path.parent)
            elif key == "max_size":
                s.max_size = parse_size(_scalar(value, where), where)
            elif key == "remote":
                s.remotes = _remotes(value, where)
            elif key == "read_only":
                if not isinstance(value, bool):
                    raise UserError(f"{where}: must be true or false")
                s.read_only = value
            elif key == "timeout":
                s.timeout = _timeout(parse_duration(_scalar(value, where), where), where)


def _apply_env(s: Settings, env: Mapping[str, str]) -> None:
    if env.get("GAFFER_CACHE_DIR"):
        s.cache_dir = Path(env["GAFFER_CACHE_DIR"]).expanduser()
    if env.get("GAFFER_CACHE_MAX_SIZE"):
        s.max_size = parse_size(env["GAFFER_CACHE_MAX_SIZE"], "GAFFER_CACHE_MAX_SIZE")
    if "GAFFER_CACHE" in env:
        s.remotes = [u.strip() for u in env["GAFFER_CACHE"].split(",") if u.strip()]
    if env.get("GAFFER_CACHE_READ_ONLY"):
        s.read_only = parse_bool(env["GAFFER_CACHE_READ_ONLY"], "GAFFER_CACHE_READ_ONLY")
    if env.get("GAFFER_CACHE_TIMEOUT"):
        what = "GAFFER_CACHE_TIMEOUT"
        s.timeout = _timeout(parse_duration(env[what], what), what)
    if env.get("GAFFER_JOBS"):
        s.jobs = _jobs(env["GAFFER_JOBS"], "GAFFER_JOBS")


def _apply_flags(s: Settings, flags: Mapping[str, Any]) -> None:
    if flags.get("cache_dir"):
        s.cache_dir = Path(flags["cache_dir"]).expanduser()
    if flags.get("cache_max_size"):
        s.max_size = parse_size(flags["cache_max_size"], "--cache-max-size")
    if flags.get("cache"):
        s.remotes = list(flags["cache"])
    if flags.get("cache_read_only"):
        s.read_only = True
    if flags.get("cache_timeout"):
        s.timeout = _timeout(parse_duration(flags["cache_timeout"], "--cache-timeout"), "--cache-timeout")
    if flags.get("jobs") is not None:
        s.jobs = _jobs(flags["jobs"], "-j/--jobs")


def parse_bool(text: str, what: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise UserError(f"{what}: {text!r} is not a boolean (use 1/0, true/false)")


def _jobs(value: Any, where: str) -> int:
    try:
        jobs = int(value)
    except (TypeError, ValueError):
        jobs = 0
    if isinstance(value, bool) or jobs < 1:
        raise UserError(f"{where}: {value!r} is not a positive number of jobs")
    return jobs


def _timeout(seconds: float, where: str) -> float:
    """A remote request's bound: positive, and small enough for every client's socket and deadline arithmetic."""
    if not 0 < seconds <= MAX_REMOTE_TIMEOUT_S:
        raise UserError(f"{where}: the timeout must be more than 0 and at most a day, not {seconds:g}s")
    return seconds


def _scalar(value: Any, where: str) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{where}: must be a string or a number")
    return value if isinstance(value, (str, int)) else str(value)


def _path(value: Any, where: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise UserError(f"{where}: must be a path string")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _remotes(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UserError(f"{where}: must be a URL or a list of URLs")
    return list(value)
