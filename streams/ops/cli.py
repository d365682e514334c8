"""The `tagstream` command line: one sub-command per tool, each a thin call into a module."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from schemas.errors import TagstreamError
from streams.platform.redaction import install_log_redaction
from streams.platform.settings import Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except TagstreamError as exc:
        raise click.ClickException(str(exc)) from None


def _kafka_security(settings: Settings) -> dict[str, Any]:
    """TLS/SASL keyword arguments for the aiokafka clients of the data tools."""
    from streams.platform.security import kafka_client_kwargs

    try:
        return kafka_client_kwargs(settings)
    except TagstreamError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def main() -> None:
    """tagstream: real-time member tagging on Kafka."""


# --- local stack (Kafka, Redis) ---------------------------------------------------------------


@main.group()
def stack() -> None:
    """Apache Kafka (KRaft) and Redis on loopback, for the demo, development and tests."""


@stack.command("up")
@click.option("--brokers", type=click.IntRange(1, 9), default=None,
              help="Kafka nodes (1 or 3); default: what the stack dir holds, else 1. Three "
                   "give tagstream's topics replication 3 and min.insync.replicas 2.")
@click.option("--fresh", is_flag=True, help="Delete the stack's Kafka data and start empty.")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for all.")
def stack_up(brokers: int | None, fresh: bool, timeout: float) -> None:
    """Start what is not running yet (Kafka nodes, Redis) and wait until all answer."""
    from streams.platform.admin import ensure_tagstream_topics
    from streams.platform.redaction import redact_url
    from streams.tools.stack import LocalStack

    settings = _settings()
    try:
        local = LocalStack(settings)
        local.up(brokers, fresh=fresh, timeout=timeout)
        clients = local.client_settings()
        asyncio.run(ensure_tagstream_topics(clients))
    except TagstreamError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Kafka {clients.broker} and Redis {redact_url(settings.redis_url)} are up")
    if clients.broker != settings.broker:
        click.echo(f"point tagstream at every node: export TAGSTREAM_BROKER='{clients.broker}'")


@stack.command("down")
def stack_down() -> None:
    """Stop exactly the processes `stack up` started (by their recorded pids); data stays."""
    from streams.tools.stack import LocalStack

    stopped = LocalStack(_settings()).down()
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (brokers, redis, bootstrap).")
def stack_status(as_json: bool) -> None:
    """What runs: each Kafka node and Redis, with pid, port and whether it answers."""
    import json

    from streams.tools.stack import LocalStack

    try:
        status = LocalStack(_settings()).status()
    except TagstreamError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(status))
        return
    for broker in status["brokers"]:
        click.echo(f"kafka node {broker['node_id']}: port {broker['port']}, pid {broker['pid']}, "
                   f"{'answering' if broker['answering'] else 'not answering'}")
    redis = status["redis"]
    click.echo(f"redis: port {redis['port']}, pid {redis['pid']}, "
               f"{'answering' if redis['answering'] else 'not answering'}")
    click.echo(f"bootstrap: {status['bootstrap']}")


# --- worker ------------------------------------------------------------------------------------


@main.command()
@click.option("--web-port", type=click.IntRange(1, 65535), default=None,
              help="This worker's HTTP port (default: TAGSTREAM_WEB_PORT). Its data directory "
                   "is <TAGSTREAM_DATA_DIR>/worker-<port>, so workers on one host need only "
                   "different ports.")
def worker(web_port: int | None) -> None:
    """Run the Faust worker (settings from TAGSTREAM_* environment variables)."""
    import dataclasses

    from streams.worker.main import run_worker

    from streams.platform.redaction import redact, secret_values

    settings = _settings()
    if web_port is not None:
        settings = dataclasses.replace(settings, web_port=web_port)
    try:
        run_worker(settings)
    except TagstreamError as exc:
        raise click.ClickException(redact(str(exc), secret_values(settings))) from None


def _run_until_signalled(run: Any) -> None:
    """Run `run(stop_event)` until SIGINT/SIGTERM sets the event."""
    import signal

    async def main_task() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(stop)

    asyncio.run(main_task())


@main.command("redis-sink")
def redis_sink() -> None:
    """Keep Redis equal to each member's newest state, rendered (member changelog -> Redis)."""
    import logging

    from streams.serving.redis_sink import run_redis_sink

    settings = _settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction(settings)
    _run_until_signalled(lambda stop: run_redis_sink(settings, stop))


@main.command("wecom-sync")
def wecom_sync() -> None:
    """Mirror tag changes to WeCom customer tags (tags.changes -> mark_tag, group 自动标签)."""
    import logging

    from streams.serving.wecom.consumer import run_wecom_sync

    settings = _settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction(settings)
    try:
        _run_until_signalled(lambda stop: run_wecom_sync(settings, stop))
    except TagstreamError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--openapi", "print_openapi", is_flag=True,
              help="Print the OpenAPI document (docs/openapi.json) and exit.")
def api(print_openapi: bool) -> None:
    """Serve the guide HTTP API and page (TAGSTREAM_API_HOST, TAGSTREAM_API_PORT)."""
    if print_openapi:
        from streams.serving.api.openapi import openapi_bytes

        sys.stdout.buffer.write(openapi_bytes())
        return
    import logging

    from streams.serving.api.app import run_api

    settings = _settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction(settings)
    try:
        run_api(settings)
    except TagstreamError as exc:
        raise click.ClickException(str(exc)) from None


# --- data tools --------------------------------------------------------------------------------


@main.command()
@click.option("--members", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--days", default=400, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=1, show_default=True, type=int)
def generate(members: int, days: int, seed: int) -> None:
    """Write a realistic synthetic event history as JSON lines to stdout."""
    from streams.tools.generate import generate_events, write_jsonl

    write_jsonl(generate_events(members=members, days=days, seed=seed), sys.stdout.buffer)


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--speed", type=float, default=None, help="Replay at this multiple of real time.")
@click.option("--max", "as_fast", is_flag=True, help="As fast as possible (the default).")
def replay(path: Path, speed: float | None, as_fast: bool) -> None:
    """Produce a recorded event file to the event topics, keyed by member, in file order."""
    from streams.ops.replay import replay as run_replay
    from streams.platform.topics import topic_names

    if speed is not None and as_fast:
        raise click.UsageError("--speed and --max exclude each other")
    if speed is not None and speed <= 0:
        raise click.UsageError("--speed must be positive")
    settings = _settings()
    result = asyncio.run(run_replay(settings.broker_bootstrap, path, names=topic_names(settings),
                                    speed=speed, partitions=settings.partitions,
                                    progress=sys.stderr.isatty(),
                                    security=_kafka_security(settings)))
    click.echo(result.summary() if hasattr(result, "summary") else str(result), err=True)


@main.command()
def backfill() -> None:
    """Re-evaluate every member now with the workers' current rules (after a new version)."""
    from streams.ops.backfill import request_backfill
    from streams.platform.topics import topic_names

    settings = _settings()
    sent = asyncio.run(request_backfill(settings.broker_bootstrap, settings.partitions,
                                        names=topic_names(settings),
                                        security=_kafka_security(settings)))
    click.echo(f"asked {sent} partitions to re-evaluate their members")


@main.command("wecom-reconcile")
@click.option("--member", "member_id", default=None, help="Only this member (default: all).")
def wecom_reconcile(member_id: str | None) -> None:
    """Read each pair's tags from WeCom and repair drift within tagstream's tag group."""
    import json

    from streams.platform.security import redis_client_kwargs
    from streams.serving.redis_store import RedisProfileStore
    from streams.serving.wecom.consumer import client_from_settings
    from streams.serving.wecom.reconcile import WeComReconciler
    from streams.serving.wecom.sync import TagMapper

    settings = _settings()

    async def run() -> dict[str, Any]:
        async with client_from_settings(settings) as client, RedisProfileStore(
                settings.redis_url, connection=redis_client_kwargs(settings)) as store:
            stats = await WeComReconciler(client, TagMapper(client), store).run(member_id)
            return {**stats.__dict__, "calls": client.stats.calls}

    try:
        click.echo(json.dumps(asyncio.run(run()), ensure_ascii=False))
    except TagstreamError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("member_id")
@click.option("--request-id", default=None, help="The requester's reference (e.g. a ticket), "
                                                  "kept in the erasure record.")
def erase(member_id: str, request_id: str | None) -> None:
    """Delete a member: state, served profile, tagstream's tags in WeCom (PIPL erasure)."""
    from streams.ops.erase import request_erasure
    from streams.platform.topics import topic_names

    settings = _settings()
    try:
        event_id = asyncio.run(request_erasure(
            settings.broker_bootstrap, settings.partitions, member_id,
            names=topic_names(settings), request_id=request_id,
            security=_kafka_security(settings)))
    except TagstreamError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"erasure of {member_id} requested ({event_id}); the worker records it on "
               "members.erasures")


@main.group()
def tags() -> None:
    """Marked tags: tags people set, not rules (campaign lists, guides' notes)."""


def _exit_error(message: str, exit_code: int) -> click.ClickException:
    error = click.ClickException(message)
    error.exit_code = exit_code
    return error


@tags.command("import")
@click.option("--tag", required=True,
              help="Tag id to mark: one under marked_tags in the rule pack, or a campaign tag "
                   "of its own id (1 to 64 of A-Z a-z 0-9 _ : . -). Rule tags are refused.")
@click.option("--name-zh", required=True,
              help="What guides and WeCom show (1 to 30 characters); a tag under marked_tags "
                   "shows the rule pack's name instead.")
@click.option("--file", "path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Member ids: one per line, or a CSV whose first column is the member id "
                   "(a member_id header, blank lines and # lines are skipped). UTF-8.")
@click.option("--ttl", default=None,
              help="Take the tag off again this long after now: 30d, 12h, 90m or 3600s "
                   "(default: it stays until removed).")
@click.option("--op", type=click.Choice(["added", "removed"]), default="added",
              show_default=True, help="Mark the tag, or take it off.")
@click.option("--dry-run", is_flag=True,
              help="Check the file and print the summary; write nothing (no broker needed).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def tags_import(tag: str, name_zh: str, path: Path, ttl: str | None, op: str, dry_run: bool,
                quiet: bool) -> None:
    """Mark a tag on every member of a file: one interaction.tag_marked event per member
    (source import), on the member's partition of events.interactions.

    Bad rows are listed on stderr with their line numbers; the valid rows still go in.
    Event ids derive from the file, the tag, the op and the expiry, so running the same
    import again marks no member twice.

    \b
    Exit codes:
      0  every row went in
      1  some rows were bad (the valid ones went in)
      2  usage error (ttl, file, tag, name, settings): nothing written
      3  writing failed part way: run the same command again
    """
    import time
    from datetime import datetime, timezone

    from streams.ops.tags_import import (ImportResult, ImportUsageError, ImportWriteError,
                                         parse_ttl, prepare_import, row_error_line, run_import)
    from streams.platform.security import kafka_client_kwargs
    from streams.platform.topics import topic_names
    from taggers.rules import load_rules

    started = time.perf_counter()
    try:
        settings = Settings.from_env()
        pack = load_rules(settings.rules_path)
        ttl_s = parse_ttl(ttl) if ttl is not None else None
        prepared = prepare_import(path, tag, name_zh.strip(), op, ttl_s,
                                  datetime.now(timezone.utc), pack)
        security = None if dry_run else kafka_client_kwargs(settings)
    except ImportUsageError as exc:
        if exc.option is None:
            raise _exit_error(str(exc), 2) from None
        raise click.BadParameter(str(exc), param_hint=f"'{exc.option}'") from None
    except TagstreamError as exc:
        raise _exit_error(str(exc), 2) from None
    for row_error in prepared.errors:
        click.echo(row_error_line(path, row_error), err=True)
    written = 0
    if prepared.events and not dry_run:
        try:
            written = asyncio.run(run_import(
                prepared.events, bootstrap=settings.broker_bootstrap,
                partitions=settings.partitions, names=topic_names(settings), security=security,
                progress=not quiet, label=f"import {tag}"))
        except ImportWriteError as exc:
            raise _exit_error(f"{exc}; running the same command again is safe (no member is "
                              f"marked twice)", 3) from None
    result = ImportResult(prepared, written, time.perf_counter() - started, dry_run=dry_run)
    click.echo(result.summary())
    if prepared.errors:
        click.get_current_context().exit(1)


@main.command()
@click.option("--events", "events_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rules", "rules_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Rule file (default: TAGSTREAM_RULES or the packaged pack).")
@click.option("--as-of", "as_of", default=None,
              help="Fire deadlines up to this RFC 3339 instant (default: the last event's time).")
@click.option("--profiles-out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--changes-out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tasks-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Each guide task's final state (the newest tasks.changes record), JSON lines.")
def dryrun(events_path: Path, rules_path: Path | None, as_of: str | None,
           profiles_out: Path | None, changes_out: Path | None,
           tasks_out: Path | None) -> None:
    """Run the production engine over an event file with no Kafka: profiles, changes and
    tasks out."""
    from taggers.dryrun import dry_run, write_dry_run
    from taggers.engine import Engine
    from taggers.rules import load_rules

    settings = _settings()
    instant = _instant(as_of)
    try:
        pack = load_rules(rules_path or settings.rules_path)
    except TagstreamError as exc:
        raise click.ClickException(str(exc)) from None
    with events_path.open("rb") as lines:
        result = dry_run(Engine(pack, settings.allowed_lateness_s), lines, as_of=instant)
    with (profiles_out.open("wb") if profiles_out else _nowhere()) as profiles, \
            (changes_out.open("wb") if changes_out else _nowhere()) as changes, \
            (tasks_out.open("wb") if tasks_out else _nowhere()) as tasks:
        write_dry_run(result, pack, profiles if profiles_out else None,
                      changes if changes_out else None, tasks if tasks_out else None)
    for line_number, reason in result.rejected[:20]:
        click.echo(f"{events_path}:{line_number}: rejected: {reason}", err=True)
    click.echo(f"{len(result.states)} members, {len(result.changes)} changes, "
               f"{len({t.task_id for t in result.tasks})} tasks, "
               f"{len(result.rejected)} rejected, {result.duplicates} duplicates, rules "
               f"{pack.version}, as of {pack.calendar.render(result.as_of) if result.as_of else '-'}",
               err=True)


def _nowhere() -> Any:
    import contextlib

    return contextlib.nullcontext(None)


def _instant(as_of: str | None) -> int | None:
    """--as-of as epoch seconds (None when not given)."""
    from datetime import datetime

    from taggers.clock import to_epoch

    if as_of is None:
        return None
    try:
        moment = datetime.fromisoformat(as_of)
    except ValueError:
        raise click.BadParameter(f"not an RFC 3339 time: {as_of!r}", param_hint="--as-of")
    if moment.tzinfo is None:
        raise click.BadParameter("needs a UTC offset, e.g. +08:00", param_hint="--as-of")
    return to_epoch(moment)


@main.command()
@click.option("--events", "events_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--old", "old_rules", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The rule file in use now.")
@click.option("--new", "new_rules", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The rule file you would deploy.")
@click.option("--as-of", "as_of", default=None,
              help="Fire deadlines up to this RFC 3339 instant (default: the last event's time).")
@click.option("--all", "show_all", is_flag=True, help="List unchanged tags too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def impact(events_path: Path, old_rules: Path, new_rules: Path, as_of: str | None,
           show_all: bool, as_json: bool) -> None:
    """What deploying --new instead of --old would do to the members of an event file: per
    tag, members before and after, gained and lost; tasks opened; WeCom mark_tag calls.
    Two dry runs of the production engine, no Kafka. Exit 2 if a rule file does not load."""
    import json

    from streams.ops.impact import impact_json, impact_text, preview

    settings = _settings()
    instant = _instant(as_of)
    try:
        result, pack, rejected = preview(events_path, old_rules, new_rules, as_of=instant,
                                         allowed_lateness_s=settings.allowed_lateness_s)
    except TagstreamError as exc:
        raise _exit_error(str(exc), 2) from None
    where = {"events": events_path, "old_rules": old_rules, "new_rules": new_rules,
             "rejected": rejected}
    if as_json:
        click.echo(json.dumps(impact_json(result, pack, **where), ensure_ascii=False))
    else:
        click.echo(impact_text(result, pack, show_all=show_all, **where))


@main.command("bench-engine")
@click.option("--against", "commit", required=True,
              help="The pinned commit whose engine is the baseline (e.g. the one before an "
                   "optimisation).")
@click.option("--events", "events_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Event file (default: a generated history of --members over --days).")
@click.option("--members", default=2000, show_default=True, type=click.IntRange(1))
@click.option("--days", default=400, show_default=True, type=click.IntRange(1))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def bench_engine(commit: str, events_path: Path | None, members: int, days: int, rounds: int,
                 as_json: bool) -> None:
    """The engine alone, this checkout against a pinned commit, on one file in one run:
    medians, speed-up, and whether every change and profile is identical."""
    import json
    import tempfile

    from streams.tools.bench.engine_compare import EngineCompareError, compare_engines
    from streams.tools.generate import generate_events, write_jsonl

    repo = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="tagstream-bench-engine-") as workdir:
        if events_path is None:
            events_path = Path(workdir) / "events.jsonl"
            with events_path.open("wb") as out:
                write_jsonl(generate_events(members=members, days=days, seed=1), out)
        try:
            report = compare_engines(repo, commit, events_path, rounds)
        except EngineCompareError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report))
    else:
        for key, value in report.items():
            click.echo(f"{key}: {value}")
    if not (report["identical_changes"] and report["identical_profiles"]):
        raise SystemExit(1)


@main.command()
@click.option("--topic", default=None,
              help="Topic name on the broker, as given (default: tags.changes with "
                   "TAGSTREAM_TOPIC_NAMESPACE before it).")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record.")
@click.option("--idle", default=0.0, help="Stop after this many seconds with nothing new.")
@click.option("--limit", default=0, help="Stop after this many records (0: no limit).")
def tail(topic: str | None, from_beginning: bool, idle: float, limit: int) -> None:
    """Print records of a topic (tag changes by default) as they arrive."""
    from streams.ops.tail import tail_topic
    from streams.platform.topics import topic_names

    settings = _settings()
    topic = topic or topic_names(settings).tag_changes
    try:
        count = asyncio.run(tail_topic(settings.broker_bootstrap, topic,
                                       from_beginning=from_beginning, idle_s=idle or None,
                                       limit=limit or None, out=sys.stdout,
                                       security=_kafka_security(settings)))
    except TagstreamError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{count} records from {topic}", err=True)


@main.command()
@click.option("--members", default=300, show_default=True, type=click.IntRange(1))
@click.option("--days", default=400, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=7, show_default=True, type=int)
@click.option("--keep-stack", is_flag=True, help="Leave the broker and Redis running.")
@click.option("--no-serve", is_flag=True,
              help="End after the results (for scripts) instead of serving the pages.")
def demo(members: int, days: int, seed: int, keep_stack: bool, no_serve: bool) -> None:
    """Stack up, worker, replay a generated history, print tag changes live; then serve the
    guide page and the operator page on loopback (URLs and tokens printed) until Ctrl-C.
    Stops what it started."""
    from streams.tools.demo import run_demo

    try:
        run_demo(_settings(), members=members, days=days, seed=seed, keep_stack=keep_stack,
                 serve=not no_serve)
    except TagstreamError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted; stopped what the demo started", err=True)
        raise SystemExit(130) from None


@main.command()
@click.option("--members", default=10_000, show_default=True, type=click.IntRange(1))
@click.option("--events", default=100_000, show_default=True, type=click.IntRange(1),
              help="About this many events: the history's days are chosen to make them.")
@click.option("--partitions", default=None, type=click.IntRange(1),
              help="Partitions per topic (default: TAGSTREAM_PARTITIONS).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Worker processes for the pipeline, the restart and the latency phase.")
@click.option("--brokers", default=1, show_default=True, type=click.IntRange(1),
              help="Kafka nodes (KRaft) of the private stack; with --use-stack, the running "
                   "cluster's are counted instead.")
@click.option("--compare-workers", type=click.IntRange(1), default=None,
              help="Last, the pipeline again with this many workers (new app id, same topics "
                   "and Redis sink), against the first pass in the same run, with each "
                   "process's CPU.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--use-stack", is_flag=True,
              help="Use the running broker and Redis of TAGSTREAM_BROKER / TAGSTREAM_REDIS_URL "
                   "(event topics must be empty; its own app id, group and changelog; "
                   "profiles go to that Redis) instead of starting private ones.")
@click.option("--keep-stack", is_flag=True, help="Leave the private broker and Redis running.")
@click.option("--profile", type=click.Choice(["py-spy", "pyinstrument"]), default=None,
              help="Run the pipeline workers under this profiler (pip install -e '.[bench]').")
@click.option("--latency-seconds", default=25.0, show_default=True, type=click.FloatRange(1),
              help="How long live orders are produced for the latency measure.")
@click.option("--latency-warm-up-seconds", default=10.0, show_default=True,
              type=click.FloatRange(0),
              help="Live orders at the same rate before the measured window, reported on "
                   "their own as latency_ms.warm_up (0: none).")
@click.option("--latency-rate", type=click.FloatRange(1), default=None,
              help="Live orders per second for the latency measure (default: half the "
                   "measured pipeline rate).")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Logs and profiles (default: <TAGSTREAM_DATA_DIR>/bench/<time>).")
def bench(members: int, events: int, partitions: int | None, workers: int, brokers: int,
          compare_workers: int | None, as_json: bool, use_stack: bool, keep_stack: bool,
          profile: str | None, latency_seconds: float, latency_warm_up_seconds: float,
          latency_rate: float | None, seed: int, workdir: Path | None) -> None:
    """Raw Kafka passthrough vs the full pipeline, latency, memory and recovery, in one run."""
    import json
    import shlex

    from streams.tools.bench import BenchOptions, format_summary, run_bench

    if use_stack and keep_stack:
        raise click.UsageError("--keep-stack is for the private stack; --use-stack never stops one")
    settings = _settings()
    options = BenchOptions(
        members=members, events=events, partitions=partitions or settings.partitions,
        workers=workers, brokers=brokers, compare_workers=compare_workers,
        use_stack=use_stack, keep_stack=keep_stack,
        profile=profile, latency_s=latency_seconds,
        latency_warm_up_s=latency_warm_up_seconds, latency_rate=latency_rate, seed=seed,
        workdir=workdir,
        command=shlex.join(["tagstream", *sys.argv[1:]]))
    try:
        result = run_bench(settings, options, lambda text: click.echo(text, err=True))
    except TagstreamError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=2) if as_json else format_summary(result))
    if result.get("error"):
        raise click.ClickException(f"bench failed: {result['error']}")


if __name__ == "__main__":
    main()
