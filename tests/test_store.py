"""The state store's contract, the same on SQLite and on PostgreSQL: schema version,
exactly-once claims under racing processes, leases, hand-back and table locks."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update

from dbkeeper.models import RunStatus, Trigger
from dbkeeper.store import SCHEMA_VERSION, StateStore, nodes_table
from dbkeeper.targets import resolve_url

SLOT = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
LEASE = timedelta(seconds=4)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return resolve_url(request.getfixturevalue("pg_url"), tmp_path)


@pytest.fixture
def store(state_url: str) -> Iterator[StateStore]:
    opened = StateStore(state_url)
    yield opened
    opened.close()


def test_schema_is_created_once_with_its_version(state_url: str) -> None:
    first = StateStore(state_url)
    second = StateStore(state_url)  # opening again migrates nothing and loses nothing
    first.register_jobs(["a"], SLOT)
    assert second.schema_version() == SCHEMA_VERSION
    assert list(second.job_states()) == ["a"]
    first.close()
    second.close()


def test_a_newer_schema_is_refused(store: StateStore, state_url: str) -> None:
    with store.transaction() as conn:
        conn.execute(
            text("UPDATE dbkeeper_meta SET value = :v WHERE key = 'schema_version'"),
            {"v": str(SCHEMA_VERSION + 1)},
        )
    with pytest.raises(Exception, match=f"schema is version {SCHEMA_VERSION + 1}"):
        StateStore(state_url)


def _claim_slots(url: str, slots: int, queue: multiprocessing.Queue[list[int]]) -> None:
    store = StateStore(url)
    node = store.register_node("test")
    won = []
    for n in range(slots):
        run_id = store.claim(
            "job",
            SLOT + timedelta(minutes=n),
            status=RunStatus.RUNNING,
            trigger=Trigger.SCHEDULE,
            node=node.id,
        )
        if run_id is not None:
            won.append(n)
    store.close()
    queue.put(won)


def test_racing_processes_claim_each_slot_exactly_once(store: StateStore, state_url: str) -> None:
    store.register_jobs(["job"], SLOT)
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[list[int]] = context.Queue()
    workers = [context.Process(target=_claim_slots, args=(state_url, 40, queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    won = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert sorted(n for wins in won for n in wins) == list(range(40))
    runs = store.runs(job="job", limit=None)
    assert len(runs) == 40
    assert len({run.scheduled_for for run in runs}) == 40


def test_runs_of_a_node_whose_lease_expired_are_abandoned(store: StateStore) -> None:
    node = store.register_node("test")
    run_id = store.claim(
        "job", SLOT, status=RunStatus.RUNNING, trigger=Trigger.SCHEDULE, node=node.id
    )
    assert run_id is not None
    assert store.abandon_orphans(LEASE) == [], "a fresh heartbeat keeps the run"
    with store.transaction() as conn:
        conn.execute(
            update(nodes_table)
            .where(nodes_table.c.id == node.id)
            .values(heartbeat_at=datetime.now(UTC) - LEASE - timedelta(seconds=1))
        )
    (abandoned,) = store.abandon_orphans(LEASE)
    assert abandoned.id == run_id
    run = store.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.ABANDONED
    assert run.error == f"node {node.id} stopped renewing its lease"
    assert store.abandon_orphans(LEASE) == [], "marked once"


def test_hand_back_returns_unstarted_runs_to_the_queue(store: StateStore) -> None:
    node = store.register_node("test")
    run_id = store.claim(
        "job", SLOT, status=RunStatus.RUNNING, trigger=Trigger.SCHEDULE, node=node.id
    )
    assert run_id is not None
    store.hand_back([run_id])
    run = store.get_run(run_id)
    assert run is not None
    assert (run.status, run.node, run.started_at) == (RunStatus.QUEUED, None, None)
    other = store.register_node("test")
    assert store.start_queued(run_id, other.id)
    assert not store.start_queued(run_id, node.id), "only one node takes a queued run"


def test_table_lock_is_exclusive_and_freed_by_a_dead_node(store: StateStore) -> None:
    first, second = store.register_node("test"), store.register_node("test")
    assert store.lock("app.events", 1, first.id, LEASE) is None
    assert store.lock("app.events", 1, first.id, LEASE) is None, "re-entrant for its run"
    assert store.lock("app.events", 2, second.id, LEASE) == 1
    assert store.lock("app.other", 2, second.id, LEASE) is None, "other tables are free"
    store.unlock("app.events", 1)
    assert store.lock("app.events", 2, second.id, LEASE) is None
    store.stop_node(second.id)
    assert store.lock("app.events", 1, first.id, LEASE) is None, "a stopped node's lock goes"


def test_nodes_registered_by_one_process_never_share_an_id(store: StateStore) -> None:
    """``keeper.run`` registers a node a run: within one process the ids are counted,
    not left to a random tag that would repeat within thousands of runs."""
    nodes = [store.register_node("run") for _ in range(3)]
    prefixes = {node.id.rsplit("-", 1)[0] for node in nodes}
    counts = [int(node.id.rsplit("-", 1)[1]) for node in nodes]
    assert len(prefixes) == 1 and prefixes.pop().split(":")[1] == str(os.getpid())
    assert counts == list(range(counts[0], counts[0] + 3))
    assert {node.id for node in nodes} <= {node.id for node in store.nodes()}
