"""The one place tagstream changes Faust's behaviour, and why. Nothing happens on import:
`install()` applies it, and each process that runs a Faust worker calls it at its start.

When a worker's table recovery completes, Faust 0.15 resumes the stream partitions and only
then seeks them to their committed offsets (`Recovery.on_recovery_completed`); flow is already
on from the changelog reads. Until the seek lands (9 s once, in a takeover) the consumer fetches
from wherever aiokafka put the partitions, and those messages reach the agent. After a takeover
they are ahead of the commit: the event-time clock moves past events the seek then delivers
again, and those are dead-lettered as late. The partitions are sought to their commits before
Faust resumes them, and Faust's own seek follows: only that one, after the resume, wakes the
consumer. This is Faust's own ordering, so it holds on every broker
(tests/unit/test_compat.py).
"""

from __future__ import annotations

from typing import Any

from faust.tables import recovery as faust_recovery

_on_recovery_completed = faust_recovery.Recovery.on_recovery_completed


async def _on_recovery_completed_seeking_first(self: Any, generation_id: int = 0) -> None:
    """Seek the stream partitions to their commits before Faust resumes them, then let Faust
    go on as before (resume, and its own seek)."""
    consumer = self.app.consumer
    if self.app.consumer_generation_id == generation_id and consumer.assignment():
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
    await _on_recovery_completed(self, generation_id)


def install() -> None:
    """Apply the adjustment (idempotent)."""
    faust_recovery.Recovery.on_recovery_completed = _on_recovery_completed_seeking_first


def installed() -> bool:
    return faust_recovery.Recovery.on_recovery_completed is _on_recovery_completed_seeking_first
