"""The materialise layer's worker pool: ordered results, a bounded window of work in flight.

Threads, not processes, and not torchdata. The work is decoding (Pillow), resizing (Pillow) and
small tensor operations (torch): all of them release the GIL for their heavy part, so threads give
real parallelism here. Threads also share the plan, the graphs and the cache index without pickling
them per batch, start instantly (a process pool costs seconds of torch imports per worker, which
would dominate short runs and tests), and cannot inherit CUDA state across a fork. torchdata's nodes
would give the same shape (a parallel map with prefetch) but are in maintenance mode and not a
dependency; the part we need is this file.

Results are yielded in input order whatever the timing, and every random choice in the work is
keyed by what it is about (see `rng`), so results do not depend on the number of workers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class WorkerPool:
    """`workers` threads (0 = run in the calling thread); `close()` ends them."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="data")
        return self._executor

    def map_ordered(self, fn: Callable[[In], Out], items: Iterable[In], depth: int) -> Generator[Out, None, None]:
        """`fn` over `items`, in order, keeping up to `depth` calls running ahead of the consumer.

        The window is topped up in bursts, when it has drained to half, not after every item: each
        submission wakes a worker that then competes with the consumer for the GIL for a moment,
        and one burst every `depth / 2` items costs the training thread less than one per item.
        Closing the iterator early (a `break`, an exception in the training step) cancels the work
        not yet started and waits for none of it.
        """
        if self.workers <= 0:
            for item in items:
                yield fn(item)
            return
        pool = self._pool()
        depth = max(1, depth)
        low_water = depth // 2
        pending: deque[Future[Out]] = deque()
        source = iter(items)
        try:
            pending.extend(pool.submit(fn, item) for item in islice(source, depth))
            while pending:
                result = pending.popleft().result()
                if len(pending) <= low_water:
                    pending.extend(pool.submit(fn, item) for item in islice(source, depth - len(pending)))
                yield result
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
