"""DAG execution: release a node when its deps are done, run up to `jobs` at once, stop (or keep going) on failure.

The scheduler knows nothing about caches or commands (Build Systems à la Carte: scheduler, rebuilder and store
stay apart). It asks two callbacks:
  - `quick(name)`: decide on the calling thread if the node needs no real work (up to date, a group);
    returns an outcome or None;
  - `work(name)`: do the real work on a pool thread; returns an outcome.
A no-op build therefore never touches the thread pool.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from gaffer.outcome import FAILED, SKIPPED, Outcome


class Scheduler:
    def __init__(
        self, order: Sequence[str], deps: Mapping[str, Sequence[str]], jobs: int, keep_going: bool = False
    ) -> None:
        self.order = list(order)
        self.deps = deps
        self.jobs = max(1, jobs)
        self.keep_going = keep_going
        self.stopping = False

    def stop(self) -> None:
        """Start no new work (Ctrl-C): running nodes finish or are killed by the caller."""
        self.stopping = True

    def run(
        self,
        work: Callable[[str], Outcome],
        quick: Callable[[str], Outcome | None],
        on_done: Callable[[str, Outcome], None] = lambda name, outcome: None,
    ) -> dict[str, Outcome]:
        nodes = set(self.order)
        waiting = {n: sum(1 for d in self.deps[n] if d in nodes) for n in self.order}
        dependents: dict[str, list[str]] = {n: [] for n in self.order}
        for n in self.order:
            for d in self.deps[n]:
                if d in nodes:
                    dependents[d].append(n)
        results: dict[str, Outcome] = {}
        ready = deque(n for n in self.order if waiting[n] == 0)
        running: dict[Future[Outcome], str] = {}
        failed = False

        def finish(name: str, outcome: Outcome) -> None:
            nonlocal failed
            results[name] = outcome
            on_done(name, outcome)
            if outcome.status == FAILED:
                failed = True
            for child in dependents[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)

        with ThreadPoolExecutor(self.jobs, thread_name_prefix="gaffer-task") as pool:
            while ready or running:
                while ready and len(running) < self.jobs:
                    name = ready.popleft()
                    bad = [d for d in self.deps[name] if d in results and results[d].status in (FAILED, SKIPPED)]
                    if bad or self.stopping or (failed and not self.keep_going):
                        why = f"dependency {bad[0]} did not succeed" if bad else "the build stopped"
                        finish(name, Outcome(SKIPPED, reason=why))
                        continue
                    outcome = quick(name)
                    if outcome is not None:
                        finish(name, outcome)
                        continue
                    running[pool.submit(work, name)] = name
                if not running:
                    continue
                # A timeout, so the main thread wakes up to run signal handlers (Ctrl-C may land on a pool thread).
                done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    try:
                        outcome = future.result()
                    except Exception as e:  # noqa: BLE001 - a bug in a task's work must not hang the build
                        outcome = Outcome(FAILED, reason=f"internal error: {type(e).__name__}: {e}")
                    finish(name, outcome)
        return results
