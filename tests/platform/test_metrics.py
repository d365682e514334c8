"""The hot path's tally reaches the Prometheus metrics, once per flush and exactly."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from streams.platform.metrics import Tally


def test_a_tally_adds_its_counts_to_the_metrics_on_flush_and_starts_again() -> None:
    registry = CollectorRegistry()
    changes = Counter("changes", "test", ["tag", "op"], registry=registry)
    tally = Tally()
    for _ in range(3):
        tally.add(changes, "high_value", "added")
    tally.add(changes, "high_value", "removed")
    assert registry.get_sample_value("changes_total", {"tag": "high_value", "op": "added"}) is None
    tally.flush()
    assert registry.get_sample_value("changes_total", {"tag": "high_value", "op": "added"}) == 3
    assert registry.get_sample_value("changes_total", {"tag": "high_value", "op": "removed"}) == 1
    tally.flush()  # nothing new: nothing added twice
    assert registry.get_sample_value("changes_total", {"tag": "high_value", "op": "added"}) == 3


def test_a_metric_counted_also_by_its_first_labels_gets_the_same_counts_at_the_flush() -> None:
    registry = CollectorRegistry()
    changes = Counter("changes", "test", ["tag", "op"], registry=registry)
    fires = Counter("fires", "test", ["tag"], registry=registry)
    tally = Tally(also={changes: (fires, 1)})
    tally.add(changes, "high_value", "added")
    tally.add(changes, "high_value", "removed")
    tally.add(changes, "dormant_90d", "added")
    assert registry.get_sample_value("fires_total", {"tag": "high_value"}) is None
    tally.flush()
    assert registry.get_sample_value("fires_total", {"tag": "high_value"}) == 2
    assert registry.get_sample_value("fires_total", {"tag": "dormant_90d"}) == 1
    assert registry.get_sample_value("changes_total", {"tag": "high_value", "op": "added"}) == 1
    tally.flush()
    assert registry.get_sample_value("fires_total", {"tag": "high_value"}) == 2
