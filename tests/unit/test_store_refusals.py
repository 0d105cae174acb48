"""Store errors read by their SQLSTATE, and a refused group split until the refused events
fail alone (SQLite here: its trigger's RAISE(ABORT) stands in for PostgreSQL's refusals; the
integration tests run the same against PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy import exc as sa_exc

from shared import errors
from shared.db import transaction, translate
from shared.models import events, failed_events
from shared.queue import PENDING_KEY, SPLIT, JobWriter, make_payload, read_payload
from tests.unit.test_worker import add_contact, an_event
from worker.context import WorkerContext
from worker.events import store_apart
from worker.jobs import store_events


class _Orig(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__("refused here")
        self.sqlstate = sqlstate


def _translated(cls: type[sa_exc.DBAPIError], sqlstate: str | None) -> Any:
    return translate(cls("INSERT", {}, _Orig(sqlstate)))


@pytest.mark.parametrize(
    "sqlstate", ["08006", "53300", "57P01", "57P03", "58030", "40001", "40P01", "25006", "55P03"]
)
def test_outages_are_waited_out(sqlstate: str) -> None:
    assert isinstance(_translated(sa_exc.InternalError, sqlstate), errors.StoreUnavailable)


@pytest.mark.parametrize("sqlstate", ["P0001", "23514", "23502", "54000", "42501", "XX000"])
def test_refusals_are_not_outages(sqlstate: str) -> None:
    # 54000 (an index row over its size) arrives as an OperationalError: the class misleads.
    refused = _translated(sa_exc.OperationalError, sqlstate)
    assert type(refused) is errors.StoreRefused
    assert refused.failure().code == "STORE_REJECTED"
    assert refused.failure().message == f"{sqlstate}: refused here"
    assert "refused here" not in refused.message  # the client's words are generic


def test_a_statement_timeout_is_its_own_kind_and_no_answer_an_outage() -> None:
    assert isinstance(_translated(sa_exc.OperationalError, "57014"), errors.StoreTimeout)
    assert isinstance(_translated(sa_exc.OperationalError, None), errors.StoreUnavailable)
    value = _translated(sa_exc.DataError, "22P05")
    assert value.status == 400 and value.message == "A value in the request cannot be stored"
    assert "refused here" in value.detail  # the database's words, for the log


@pytest.fixture
def refusing(engine: Engine, project: tuple[str, str, str]) -> str:
    """A project with a contact, whose store refuses events named "poison"; its id."""
    add_contact(engine, project[0], "jane@example.com")
    with transaction(engine) as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.event_name = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'no poison here'); END"
        )
    return project[0]


def test_a_refused_event_fails_alone_and_the_rest_are_stored(
    worker_ctx: WorkerContext, engine: Engine, refusing: str
) -> None:
    pid = refusing
    batch = [an_event(pid) for _ in range(100)]
    batch[37] = an_event(pid, eventName="poison")
    worker_ctx.redis.hset(PENDING_KEY, mapping={e["id"]: "g1" for e in batch})
    assert store_events(make_payload(batch)) == {"stored": 99, "failed": 1, "jobs": 1}
    with transaction(engine) as conn:
        assert len(conn.execute(select(events.c.id)).all()) == 99
        failed = conn.execute(select(failed_events)).one()
    assert failed.id == batch[37]["id"] and failed.code == "STORE_REJECTED"
    assert "no poison here" in failed.message
    assert worker_ctx.redis.hlen(PENDING_KEY) == 0
    assert worker_ctx.queue.rq.failed_job_registry.get_job_ids() == [batch[37]["id"]]


def test_one_refused_event_of_500_costs_a_logarithmic_number_of_attempts(
    worker_ctx: WorkerContext, engine: Engine, refusing: str
) -> None:
    pid = refusing
    batch = [an_event(pid) for _ in range(500)]
    batch[250] = an_event(pid, eventName="poison")
    outcome = store_apart(engine, batch)
    assert len(outcome.stored) == 499 and [e["id"] for e, _ in outcome.failed] == [batch[250]["id"]]
    assert outcome.attempts <= 1 + 2 * 9


def test_parts_left_when_time_runs_short_are_handed_off_as_split_jobs(
    worker_ctx: WorkerContext, engine: Engine, refusing: str
) -> None:
    pid = refusing
    batch = [an_event(pid) for _ in range(8)]
    batch[0] = an_event(pid, eventName="poison")
    outcome = store_apart(engine, batch, time_left=lambda: False)
    assert outcome.attempts == 1 and [len(p) for p in outcome.left] == [4, 4]
    with worker_ctx.redis.pipeline(transaction=True) as pipe:
        JobWriter(worker_ctx.queue).add_split(pipe, outcome.left, 1)
        pipe.execute()
    jobs = worker_ctx.queue.rq.get_jobs()
    payloads = [read_payload(job.args[0]) for job in jobs]
    assert {p.kind for p in payloads} == {SPLIT} and {p.timeouts for p in payloads} == {1}
    # The first half (with the refused event) runs first; each mark names its new job.
    assert payloads[0].events == batch[:4]
    marks = worker_ctx.redis.hmget(PENDING_KEY, [e["id"] for e in batch[:4]])
    assert set(marks) == {jobs[0].id.encode()}


@pytest.mark.parametrize("timeouts", [-1, True, "2", 1.5])
def test_a_payload_with_a_bad_timeout_count_is_bad(timeouts: Any) -> None:
    payload = {**make_payload([], SPLIT), "timeouts": timeouts}
    with pytest.raises(errors.EventpipeError) as caught:
        read_payload(payload)
    assert caught.value.code == "BAD_PAYLOAD"


def test_the_noeviction_vouch_is_a_boolean_setting() -> None:
    from shared.settings import load_settings

    assert load_settings({"REDIS_ASSUME_NOEVICTION": "true"}).redis_assume_noeviction is True
    assert load_settings({}).redis_assume_noeviction is False
    with pytest.raises(ValueError):
        load_settings({"REDIS_ASSUME_NOEVICTION": "maybe"})
