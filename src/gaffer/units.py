"""Parse sizes (`10GiB`, `500M`) and durations (`500ms`, `2h`) given on the command line or in config."""

from __future__ import annotations

from gaffer.errors import UserError

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER_UNIT = r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*"


def _number_unit(text: str) -> tuple[str, str] | None:
    """The number and the unit (lowercase) of `500 MiB`, or None. `re` is imported here, not at start-up: a
    setting's default is not parsed, and gobuildcache's start-up has no other use for it."""
    import re

    match = re.fullmatch(_NUMBER_UNIT, text)
    return (match.group(1), match.group(2).lower()) if match else None


def parse_size(text: str | int, what: str = "size") -> int:
    """Return a byte count; `what` names the flag or setting for the error message."""
    if isinstance(text, int):  # from gaffer.toml: a TOML integer
        if text < 0:
            raise UserError(f"{what}: {text} is not a size (examples: 500MB, 10GiB, 1048576)")
        return text
    parsed = _number_unit(str(text))
    if not parsed or parsed[1] not in _SIZE_UNITS:
        raise UserError(f"{what}: {text!r} is not a size (examples: 500MB, 10GiB, 1048576)")
    return int(float(parsed[0]) * _SIZE_UNITS[parsed[1]])


def parse_duration(text: str | float, what: str = "duration") -> float:
    """Return seconds; `what` names the flag or setting for the error message."""
    if isinstance(text, (int, float)):
        return float(text)
    parsed = _number_unit(str(text))
    if not parsed or parsed[1] not in _DURATION_UNITS:
        raise UserError(f"{what}: {text!r} is not a duration (examples: 500ms, 30s, 2h)")
    return float(parsed[0]) * _DURATION_UNITS[parsed[1]]


def format_size(n: int) -> str:
    """Human-readable byte count in the largest unit it fills: `512 B`, `3.5 KiB`, `45.0 MiB`."""
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if round(value, 1) < 1024:  # 1048575 B is `1.0 MiB`, not `1024.0 KiB`
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_count(n: int, noun: str, plural: str = "") -> str:
    """`1 task`, `2 tasks`: a count with its noun in the right number (`plural` for irregular nouns)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
