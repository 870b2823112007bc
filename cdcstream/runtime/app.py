"""The Faust application: settings + config -> app with tables, agents and web views."""

from __future__ import annotations

import logging

import faust

from cdcstream.core.config import Config
from cdcstream.core.settings import Settings
from cdcstream.core.tls import server_ssl_context
from cdcstream.runtime import consumer as faust_fixes
from cdcstream.runtime.context import Pipeline
from tables import register as register_tables

log = logging.getLogger("cdcstream")

#: Exit code asking the supervisor (`cdcstream worker`) to start the worker again, e.g.
#: after `apply` added a table whose topic must be subscribed.
EXIT_RESTART = 75


def create_app(settings: Settings, config: Config, existing_topics: set[str] | None = None) -> tuple[
        faust.App, Pipeline]:
    """Build the app. ``existing_topics`` limits subscription to topics Kafka already has:
    subscribing to a missing one would let a broker with auto-create make it with the wrong
    partition count before Debezium does."""
    s = settings
    app = faust.App(
        s.app_id,
        broker=s.broker,
        store=s.store,
        # One directory per app id: Faust names its table stores by table only (rows-0.db), so
        # two apps sharing data_dir read each other's offsets ("persisted offset ... is higher
        # than the last offset in that topic"; `cdcstream demo` crashed on a machine that had
        # run another app id).
        datadir=str(s.data_dir / s.app_id),
        web_host=s.web_host,
        # Faust binds 0.0.0.0 unless told: web_host is documented as the bind address.
        web_bind=s.web_host,
        web_port=s.web_port,
        # HTTPS when web_tls_cert is set (run_worker has checked the files, naming a bad one).
        web_ssl_context=server_ssl_context(s),
        canonical_url=f"{'https' if s.web_tls else 'http'}://{s.web_host}:{s.web_port}",
        web_enabled=True,
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        key_serializer="raw",
        value_serializer="json",
        autodiscover=False,
        # Two minutes: a first embedding batch on a cold CPU model can take that long.
        broker_commit_livelock_soft_timeout=120,
        stream_wait_empty=False,
        producer_max_request_size=16 * 1024 * 1024,
        consumer_max_fetch_size=16 * 1024 * 1024,
        # Backpressure: a stalled sink stops the fetcher instead of filling memory.
        stream_buffer_maxsize=s.read_ahead,
        # Faust's default (60 s) keeps a kill -9'd worker's partitions idle for a minute;
        # heartbeats come from the event loop, which the pipeline never blocks.
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=min(3.0, s.session_timeout_s / 3),
        broker_max_poll_records=s.read_ahead,
        # Row-state writes leave in batches instead of one produce request each (issue 19).
        producer_linger=s.changelog_linger_s,
        producer_max_batch_size=256 * 1024,
    )
    # Before anything builds the consumer (tables, agents): the aiokafka transport whose
    # consumer is faust_fixes.FixedConsumer; Faust's own classes stay as they are.
    app.transport = faust_fixes.fixed_transport(app)
    tables = register_tables(app, s.partitions)
    pipe = Pipeline(app, s, config, tables)
    wanted = sorted(config.topic_map())
    pipe.data_topics = [t for t in wanted if existing_topics is None or t in existing_topics]

    from agents import register as register_agents

    register_agents(app, pipe)
    from cdcstream.web.views import register as register_web

    register_web(app, pipe)
    return app, pipe
