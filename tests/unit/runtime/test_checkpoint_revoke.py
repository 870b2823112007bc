"""A revocation stops the batch in flight (issue 16 follow-up): the checkpoint cancels its
guarded attempt, which raises ``BatchRevoked``, and its events are no longer live. The real
scenario (a batch blocked by a sink across a rebalance) is tests/e2e/test_rebalance_blocked.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types.tuples import TP, Message

from cdcstream.runtime.checkpoint import BatchRevoked, Checkpoint


def _event(partition: int, offset: int) -> Any:
    return SimpleNamespace(message=Message("t", partition, offset, 0.0, 0, None, b"k", b"v", None,
                                           tp=TP("t", partition)))


def test_a_revocation_cancels_the_guarded_attempt_of_the_batch_in_flight() -> None:
    async def scenario() -> tuple[bool, bool, bool, int]:
        cp = Checkpoint()
        batch = [_event(0, 1), _event(1, 1)]
        cp.admit(batch)
        retrying = asyncio.Event()

        async def blocked_sink() -> None:
            retrying.set()
            await asyncio.sleep(3600)  # a sink retrying for as long as it is down

        attempt = asyncio.ensure_future(cp.guard(blocked_sink()))
        await retrying.wait()
        cp.revoke([("t", 1)])
        with pytest.raises(BatchRevoked):
            await asyncio.wait_for(attempt, 5)
        return cp.live(batch[0]), cp.live(batch[1]), cp._guarded is None, cp.revoked_batches

    assert asyncio.run(scenario()) == (True, False, True, 1)


def test_a_revocation_of_other_partitions_leaves_the_attempt_alone() -> None:
    async def scenario() -> str:
        cp = Checkpoint()
        cp.admit([_event(0, 1)])

        async def write() -> str:
            await asyncio.sleep(0.05)
            return "written"

        attempt = asyncio.ensure_future(cp.guard(write()))
        await asyncio.sleep(0)
        cp.revoke([("t", 1)])
        return await attempt

    assert asyncio.run(scenario()) == "written"


def test_a_stopping_worker_cancels_the_attempt_and_is_not_taken_for_a_revocation() -> None:
    async def scenario() -> tuple[bool, bool]:
        cp = Checkpoint()
        cp.admit([_event(0, 1)])
        inner: list[asyncio.Task[Any]] = []

        async def blocked_sink() -> None:
            t = asyncio.current_task()
            assert t is not None
            inner.append(t)
            await asyncio.sleep(3600)

        agent = asyncio.ensure_future(cp.guard(blocked_sink()))
        await asyncio.sleep(0.01)
        agent.cancel()  # Faust stopping the agent
        try:
            await agent
        except asyncio.CancelledError:
            return True, inner[0].cancelled()
        return False, inner[0].cancelled()

    assert asyncio.run(scenario()) == (True, True)
