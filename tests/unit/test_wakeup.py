"""Waking an event loop from another thread: every call posted runs once, on its loop, in the
order posted, with the eventfd waker (Linux) and the portable one."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from jidoka.store import wakeup
from jidoka.store.wakeup import Wakers


@pytest.fixture(params=["eventfd", "threadsafe"])
def wakers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Wakers:
    if request.param == "eventfd" and not hasattr(os, "eventfd"):
        pytest.skip("this platform has no eventfd")
    monkeypatch.setattr(wakeup, "_HAS_EVENTFD", request.param == "eventfd")
    return Wakers()


async def test_calls_posted_from_a_thread_run_on_the_loop_in_order(wakers: Wakers) -> None:
    loop = asyncio.get_running_loop()
    waker = wakers.for_loop(loop)
    assert wakers.for_loop(loop) is waker  # one per loop
    seen: list[tuple[int, bool]] = []
    done = loop.create_future()

    def record(n: int) -> None:
        seen.append((n, threading.current_thread() is threading.main_thread()))
        if n == 99:
            done.set_result(None)

    def post_all() -> None:
        for n in range(100):
            waker.post(record, n)

    thread = threading.Thread(target=post_all)
    thread.start()
    await done
    thread.join()
    assert seen == [(n, True) for n in range(100)]
    wakers.close()


async def test_close_runs_what_is_queued_and_later_posts_do_nothing(wakers: Wakers) -> None:
    loop = asyncio.get_running_loop()
    waker = wakers.for_loop(loop)
    seen: list[int] = []
    waker.post(seen.append, 1)  # from the loop's own thread, before it ran
    wakers.close()
    await asyncio.sleep(0)
    assert seen == [1]
    waker.post(seen.append, 2)  # after close: nothing fails
    await asyncio.sleep(0)
    # The eventfd waker is gone with its fd; the portable one needs none and the loop is open.
    assert seen == ([1] if wakeup._HAS_EVENTFD else [1, 2])


def test_a_closed_loop_s_waker_is_closed_without_it(wakers: Wakers) -> None:
    loop = asyncio.new_event_loop()
    waker = wakers.for_loop(loop)
    loop.close()
    waker.post(print, "never")  # the loop is gone: a no-op
    wakers.close()
