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
from queue import Empty, SimpleQueue
from threading import Thread

from gaffer.outcome import FAILED, SKIPPED, Outcome

# What a pool thread hands back: the node, its outcome, or what its work raised instead.
Done = tuple[str, Outcome | None, BaseException | None]


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
        running = 0
        failed = False
        pool = _Pool(work, self.jobs)

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

        try:
            while ready or running:
                while ready and running < self.jobs:
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
                    pool.submit(name)
                    running += 1
                if not running:
                    continue
                # A timeout, so the main thread wakes up to run signal handlers (Ctrl-C may land on a pool thread).
                try:
                    name, done, error = pool.get(timeout=0.2)
                except Empty:
                    continue
                running -= 1
                if error is not None and not isinstance(error, Exception):
                    raise error  # SystemExit and the like: not a task's failure
                if done is None:  # a bug in a task's work must not hang the build
                    done = Outcome(FAILED, reason=f"internal error: {type(error).__name__}: {error}")
                finish(name, done)
        finally:
            pool.shutdown()
        return results


class _Pool:
    """Up to `size` threads running `work` on the names submitted, each started when the work submitted first
    outnumbers them (a build with nothing to run starts none). Plain threads and queues: concurrent.futures
    would cost every `gaffer run` its import, and logging's, for the one thing used of it."""

    def __init__(self, work: Callable[[str], Outcome], size: int) -> None:
        self.work = work
        self.size = size
        self.todo: SimpleQueue[str | None] = SimpleQueue()
        self.done: SimpleQueue[Done] = SimpleQueue()
        self.threads: list[Thread] = []
        self.busy = 0  # submitted, not yet taken back by `get`

    def submit(self, name: str) -> None:
        self.busy += 1
        if self.busy > len(self.threads) and len(self.threads) < self.size:
            thread = Thread(target=self._serve, name=f"gaffer-task_{len(self.threads)}", daemon=True)
            self.threads.append(thread)
            thread.start()
        self.todo.put(name)

    def get(self, timeout: float) -> Done:
        """The next finished node; raises queue.Empty after `timeout` seconds without one."""
        done = self.done.get(timeout=timeout)
        self.busy -= 1
        return done

    def _serve(self) -> None:
        while (name := self.todo.get()) is not None:
            try:
                self.done.put((name, self.work(name), None))
            except BaseException as e:  # noqa: BLE001 - handed to the scheduler, which decides
                self.done.put((name, None, e))

    def shutdown(self) -> None:
        """Let every thread finish the work it holds, then end it (as leaving a ThreadPoolExecutor does)."""
        for _ in self.threads:
            self.todo.put(None)
        for thread in self.threads:
            thread.join()
