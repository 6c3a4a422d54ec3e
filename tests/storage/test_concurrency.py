"""Numbering and budget under contention: 64 processes (spawned, as MPI ranks or separate jobs would be)
start trials at the same moment, on SQLite and on PostgreSQL. Every number is unique and a budget of 10
admits exactly 10 trials, however the writers interleave; jobs counted at the same moment get 0 … 63."""

import multiprocessing as mp
import queue
import traceback

import pytest

from oialr_search.storage import COMPLETE, Store

PROCESSES = 64
BUDGET = 10
TIMEOUT = 300  # seconds for the whole race: 64 interpreters start on a 2-core machine


def _racer(url: str, index: int, barrier, results) -> None:  # noqa: ANN001
    """One writer: one trial in the open study, then trials under the budget until it is spent."""
    try:
        store = Store(url, create=False)
        open_study, budgeted = store.get_study("open"), store.get_study("budget")
        barrier.wait(timeout=TIMEOUT)  # every process connected: start together
        first = store.start_trial(open_study, params={"i": index}, rank=index, island=None, device="cpu")
        barrier.wait(timeout=TIMEOUT)
        job = store.start_job(open_study)  # as 64 jobs starting at once on one study
        barrier.wait(timeout=TIMEOUT)
        admitted = []
        # like a search rank: start, finish, start the next; the three "jobs" only differ in their rank ids
        while (t := store.start_trial(budgeted, params={"i": index}, rank=index % 3, island=None, device="cpu",
                                      limit=BUDGET)) is not None:
            admitted.append(t.number)
            store.finish_trial(t.id, state=COMPLETE, value=float(index), values=[float(index)])
        store.engine.dispose()
        results.put((index, first.number, admitted, job, None))
    except BaseException:  # noqa: BLE001 - reported to the test, which fails with it
        results.put((index, None, [], None, traceback.format_exc()))


def _study(store: Store, name: str) -> None:
    store.create_study(name=name, space={"raw": {}}, space_path="x.yaml", metric="val_loss", direction="minimize",
                       backend="optuna", seed=0, budget=BUDGET)


@pytest.mark.slow
def test_64_processes_get_unique_numbers_and_the_budget_holds(store_url):
    store = Store(store_url)
    _study(store, "open")
    _study(store, "budget")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(store_url, i, barrier, results), daemon=True)
             for i in range(PROCESSES)]
    for p in procs:
        p.start()
    got = []
    try:
        for _ in range(PROCESSES):
            got.append(results.get(timeout=TIMEOUT))
    except queue.Empty:
        pytest.fail(f"only {len(got)} of {PROCESSES} processes reported within {TIMEOUT}s")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [e for *_, e in got if e]
    assert not errors, f"{len(errors)} process(es) failed, the first:\n{errors[0]}"
    assert sorted(n for _, n, _, _, _ in got) == list(range(PROCESSES))
    assert sorted(job for *_, job, _ in got) == list(range(PROCESSES))
    admitted = sorted(n for _, _, a, _, _ in got for n in a)
    assert admitted == list(range(BUDGET))
    trials = store.trials(store.get_study("budget"))
    assert len(trials) == BUDGET and all(t.state == COMPLETE for t in trials)
    assert len(store.trials(store.get_study("open"))) == PROCESSES
