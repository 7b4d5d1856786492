"""daemon.wakeup: what wakes the supervisor (signal handlers, the web thread) without a lock."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from daemon.wakeup import Wakeup

HANG_S = 10.0  # a wait that should return at once ends here: a hang guard, not a timing


@pytest.fixture
def wakeup() -> Iterator[Wakeup]:
    wake = Wakeup()
    yield wake
    wake.close()


@pytest.fixture
def quiet_sigusr1() -> Iterator[None]:
    """SIGUSR1 with a Python handler that does nothing at all (not even `set`)."""
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_a_wakeup_set_before_the_wait_is_not_lost_and_is_consumed(wakeup: Wakeup) -> None:
    wakeup.set()
    wakeup.set()  # several count as one
    assert wakeup.wait(HANG_S)
    assert not wakeup.wait(0.0)


def test_wait_times_out_when_nothing_wakes_it(wakeup: Wakeup) -> None:
    assert not wakeup.wait(0.01)


def test_another_thread_wakes_a_waiting_wait(wakeup: Wakeup) -> None:
    waker = threading.Timer(0.05, wakeup.set)
    waker.start()
    try:
        assert wakeup.wait(HANG_S)
    finally:
        waker.cancel()


def test_set_after_close_is_harmless(wakeup: Wakeup) -> None:
    wakeup.close()
    wakeup.set()  # a late signal during shutdown must not raise in its handler


@pytest.mark.usefixtures("quiet_sigusr1")
def test_inside_signals_wake_any_handled_signal_wakes_the_wait(wakeup: Wakeup) -> None:
    """Sent from another thread, the signal may be taken by that thread; its Python handler
    then runs only when the main thread next runs Python code, after the wait: the wakeup fd
    (written from C) is what ends the wait."""
    sender = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1))
    with wakeup.signals_wake():
        sender.start()
        try:
            assert wakeup.wait(HANG_S)
        finally:
            sender.cancel()
    assert signal.set_wakeup_fd(-1) == -1  # the previous wakeup fd (none) was restored
