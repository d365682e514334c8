"""`tagstream bench`: what the pipeline costs next to plain Kafka, measured in one run.

One run on Apache Kafka (a private stack of `--brokers` KRaft nodes and a Redis on free loopback
ports under the bench's directory, or with `--use-stack` the cluster and Redis the settings
point at) measures, in this order:

1. a generated history of N members (streams/tools/generate.py, `days` chosen so that N members make
   about the requested number of events, ending now) is pre-produced by the replay tool;
2. raw passthrough: a plain aiokafka consumer (assigned partitions, no group) reads the three
   event topics, decodes each value with orjson and produces it to `bench.passthrough`, as
   fast as it can: first record consumed -> last record acknowledged; then the Faust floor:
   a Faust worker whose agent only acknowledges reads the same messages (first -> last), the
   ceiling on what any Faust agent can do here (`ratio_ceiling`);
3. the pure engine's dry run over the same file gives the exact set of tag changes the stream
   must publish, and each member's state size;
4. the pipeline: W worker processes on the event-time clock (so the result is deterministic)
   and the Redis sink, started once the events are on the topics: the first worker's
   "Worker ready" (group joined, partitions assigned, changelog recovered; excluded) -> the
   Kafka timestamp of the last expected tag change on `tags.changes`;
5. restart recovery, twice, process start -> "Worker ready": (a) the pipeline workers, stopped
   cleanly, are started again (wall clock) on their own data dirs, so each opens its RocksDB
   store and reads only the changelog after the offset the store persisted; those are stopped,
   and (b) new workers with empty data dirs rebuild every member's state from the changelog.
   The offset ranges each recovery read come from Faust's own log (its highwater and
   start-offset tables); the records in them, and the changelog's size before (b), are counted
   by reading the changelog, whose offsets have gaps once Kafka has compacted a closed segment
   (exact for one worker: with several, a rebalance may cut a round short or make a partition
   be read twice);
6. latency: on the workers of (b), a first order of a new member (one tag change each, at least)
   produced at half the measured pipeline rate for a while: produce -> the change read back
   from `tags.changes` on this host, p50 and p99.

Speeds are reported, never asserted. Every process the bench starts is stopped by its pid,
also on failure and Ctrl-C. The workers, the sink, the Kafka node(s) and Redis share the
machine's cores with the bench itself, as they would on a single host.

The package's modules, one phase or concern each: `run` (the phases in order), `history`,
`passthrough`, `pipeline`, `recovery`, `latency`, `profiling`, `report`, and `common` and
`children` under them all.
"""

from streams.tools.bench.common import BenchError, BenchOptions, broker_name, cpu_seconds
from streams.tools.bench.history import days_for
from streams.tools.bench.latency import live_order, measure_latency
from streams.tools.bench.profiling import format_top, parse_collapsed, summarize_stacks
from streams.tools.bench.recovery import recovery_rounds, records_in
from streams.tools.bench.report import format_summary
from streams.tools.bench.run import run_bench

__all__ = ["BenchError", "BenchOptions", "broker_name", "cpu_seconds", "days_for", "format_summary",
           "format_top", "live_order", "measure_latency", "parse_collapsed", "records_in",
           "recovery_rounds", "run_bench", "summarize_stacks"]
