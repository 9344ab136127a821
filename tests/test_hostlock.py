"""hostlock: one holder at a time per name on this host; a waiter is told before it waits."""
from __future__ import annotations

import threading
import time

from pytorch_cuda import hostlock


def test_a_free_lock_is_taken_without_a_word(tmp_path):
    said = []
    with hostlock.held("builder-stage debian:bookworm-slim", tmp_path, on_wait=lambda: said.append("waiting")):
        pass
    assert said == []


def test_a_second_holder_says_it_waits_and_gets_the_lock_only_when_the_first_lets_go(tmp_path):
    said, entered = [], []

    def second() -> None:
        with hostlock.held("system-stage debian:bookworm-slim linux/amd64", tmp_path,
                           on_wait=lambda: said.append("waiting")):
            entered.append(time.monotonic())

    with hostlock.held("system-stage debian:bookworm-slim linux/amd64", tmp_path):
        waiter = threading.Thread(target=second)
        waiter.start()
        deadline = time.monotonic() + 10
        while not said and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # it has said so: it must not be inside now
        assert said == ["waiting"] and entered == []
        released = time.monotonic()
    waiter.join(10)
    assert len(entered) == 1 and entered[0] >= released


def test_other_names_do_not_wait_for_each_other(tmp_path):
    said = []
    with hostlock.held("builder-stage debian:bookworm-slim", tmp_path), \
            hostlock.held("builder-stage nvidia/cuda:12.1", tmp_path, on_wait=lambda: said.append("waiting")):
        pass
    assert said == []
