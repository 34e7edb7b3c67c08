"""The executor seam: what runs a prepared REAPI action, wherever that is.

The orchestrator (gaffer.build) keys a task, asks the cache, and on a miss hands the `PreparedAction` to its
executor. Implementations:

- `execute.local.LocalExecutor`: the task's command in the workspace itself, on this machine (today's default);
- `execute.sandbox.SandboxExecutor` (`gaffer run --sandbox`): the action's input root materialised from the
  CAS into a fresh directory (`run_action`), run there, its outputs restored into the workspace from the result;
- `execute.remote.RemoteExecutor` (`gaffer run --remote`): the action sent to a REAPI Execution service.

Every executor runs the Command with exactly its environment (the declared, keyed variables) plus the
pass-through variables the task names (`pass_env`), taken from the executing side's own environment, plus
gaffer's own task variables; it never adds the rest of its environment. An executor that runs the action away
from the workspace needs the input files in the CAS: the dep outputs are there already, the workspace files
are `PreparedAction.sources` (to upload or `put_file`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from gaffer.execute.orphans import RUN_ENV
from gaffer.lock import LOCK_ENV

if TYPE_CHECKING:
    from gaffer.actions import Outputs, PreparedAction
    from gaffer.digest import Digest

OWN_ENV = (LOCK_ENV, RUN_ENV)  # gaffer's own task variables: always passed (see lock.py, orphans.py)


class ExecuteResult(NamedTuple):
    """One execution: its logs and timing, and on success its outputs and ActionResult. `failure` says why it
    failed ("" when it succeeded). On success the outputs are in the workspace and every blob the ActionResult
    names is in the local CAS, unless `remote_only`: then only its Trees and logs are."""

    duration_s: float
    stdout: bytes
    stderr: bytes
    failure: str = ""
    outputs: Outputs | None = None
    action_result: bytes = b""  # the serialized REAPI ActionResult
    blobs: Sequence[Digest] = ()  # the blobs it names: outputs, Trees, stdout, stderr
    where: str = ""  # where it ran when not here: "worker W"
    cached: bool = False  # not run: a remote's action cache answered (duration_s is then the original run's)
    remote_only: bool = False  # its outputs were left on the remote (--remote-download=minimal), not written here


class Executor(Protocol):
    def execute(self, action: PreparedAction, pass_env: Sequence[str], name: str = "") -> ExecuteResult:
        """Run the action; `pass_env` names the pass-through variables the executing side supplies; `name` is
        the task's, for what the executor shows or tells a server about it."""

    def cancel_all(self) -> None:
        """Stop every running execution (Ctrl-C, SIGTERM); what is cancelled fails with "interrupted"."""


def task_environment(declared: Iterable[tuple[str, str]], pass_env: Sequence[str]) -> dict[str, str]:
    """The environment a task runs with here: its pass-through variables from this process's environment
    (those set), the declared ones as the Command holds them, and gaffer's own task variables."""
    environ = os.environ
    env = {name: environ[name] for name in pass_env if name in environ}
    env.update(declared)
    env.update((name, environ[name]) for name in OWN_ENV if name in environ)
    return env
