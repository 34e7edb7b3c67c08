"""Make dependency files as gcc and clang write them (`-MD`, `-MF`): the files a compile read, and the text
rewritten between checkouts.

gcc escapes a space as `\\ `, `#` as `\\#` and `$` as `$$`, and continues long lines with a backslash; a
prerequisite is a token after the first `target:` of a rule (with `-MP`, headers also appear as empty rules).
"""

from __future__ import annotations

import re

from gaffer.cc.basedir import MARK, absolute, relative, under

_TOKEN = re.compile(r"(?:\\.|[^\s\\])+")
_MARKED = re.compile(MARK + r"((?:\\.|[^\s\\])+)")


def _unescape(token: str) -> str:
    return re.sub(r"\\([ #\t])", r"\1", token).replace("$$", "$")


def prerequisites(text: str) -> list[str]:
    """Every prerequisite path, once, in order of appearance."""
    found: dict[str, None] = {}
    for line in text.replace("\\\n", " ").splitlines():
        tokens = _TOKEN.findall(line)
        target_end = next((n for n, t in enumerate(tokens) if t.endswith(":")), None)
        if target_end is None:
            continue
        for token in tokens[target_end + 1 :]:
            found.setdefault(_unescape(token), None)
    return list(found)


def to_portable(text: str, cwd: str, base_dir: str) -> str:
    """Absolute paths under `base_dir` as MARK + their path relative to `cwd` (the caller checked that neither
    directory holds a character the file escapes)."""
    def rewrite(m: re.Match[str]) -> str:
        token = m.group(0)
        return MARK + relative(token, cwd) if token.startswith("/") and under(token, base_dir) else token

    return _TOKEN.sub(rewrite, text)


def from_portable(text: str, cwd: str) -> str | None:
    """`to_portable`'s inverse in this working directory; None if a path cannot be placed here."""
    failed = False

    def restore(m: re.Match[str]) -> str:
        nonlocal failed
        path = absolute(m.group(1), cwd)
        if path is None:
            failed = True
            return ""
        return path

    out = _MARKED.sub(restore, text)
    return None if failed else out
