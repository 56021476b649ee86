"""Searches by image take turns in a web process (`SEARCH_SLOTS`), and a wait never refuses one."""

import threading
import time

import pytest

from gallery import selectors
from gallery.selectors.search_slots import search_slot
from tests.images import encode, make_category_picture


def _hold_slot(seconds: float, entered: threading.Event) -> threading.Thread:
    def hold() -> None:
        with search_slot():
            entered.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    assert entered.wait(5)
    return thread


@pytest.mark.django_db
def test_a_search_waits_for_the_slot_and_says_so_in_its_stages(gallery, settings):
    settings.SEARCH_SLOTS = 1
    query = encode(make_category_picture("blue", 4242, (96, 96)), "PNG")
    selectors.image_search_by_image(query, k=3)  # models and index loaded before timing
    holder = _hold_slot(0.6, threading.Event())
    result = selectors.image_search_by_image(query, k=3)
    holder.join()
    assert result.stages_ms["wait"] >= 400
    assert result.took_ms >= result.stages_ms["wait"]  # the time a visitor waited, all of it
    assert result.hits and result.hits[0].image.category == "blue"

    settings.SEARCH_SLOTS = 2  # two slots: the second search does not wait for the first
    holder = _hold_slot(0.6, threading.Event())
    result = selectors.image_search_by_image(query, k=3)
    holder.join()
    assert result.stages_ms["wait"] < 100


def test_a_search_that_waits_too_long_runs_anyway(settings):
    settings.SEARCH_SLOTS = 1
    settings.SEARCH_SLOT_WAIT_SECONDS = 0.2
    holder = _hold_slot(1.5, threading.Event())  # a stuck search holds the only slot
    started = time.perf_counter()
    with search_slot() as waited:
        ran_after = time.perf_counter() - started
    holder.join()
    assert 0.15 <= waited < 1.0 and ran_after < 1.0


def test_no_slots_means_no_waiting(settings):
    settings.SEARCH_SLOTS = 0
    holder = _hold_slot(0.5, threading.Event())
    with search_slot() as waited:
        assert waited == 0.0
    holder.join()


def test_freed_slots_go_to_the_waiters_in_the_order_they_came():
    from gallery.selectors.search_slots import FairGate

    gate = FairGate(1)
    assert gate.acquire(1.0)
    order: list[int] = []

    def wait_turn(n: int) -> None:
        assert gate.acquire(5.0)
        order.append(n)
        gate.release()

    waiters = []
    for n in range(5):
        waiters.append(threading.Thread(target=wait_turn, args=(n,)))
        waiters[-1].start()
        time.sleep(0.05)  # each one queued before the next comes
    gate.release()
    for thread in waiters:
        thread.join()
    assert order == [0, 1, 2, 3, 4]
    assert gate.acquire(0.0)  # every slot came back


def test_a_freed_slot_is_handed_to_the_waiter_not_taken_by_a_newcomer():
    from gallery.selectors.search_slots import FairGate

    gate = FairGate(1)
    assert gate.acquire(1.0)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(gate.acquire(5.0)))
    waiter.start()
    time.sleep(0.1)  # queued
    gate.release()
    assert not gate.acquire(0.0)  # the search that came first has it, not this newcomer
    waiter.join()
    assert got == [True]
    gate.release()
    assert gate.acquire(0.0)
