"""The demo database: a small shop schema in the stack's PostgreSQL, one table per profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_ROLE = "cdc_demo"
DEMO_PASSWORD = "demo-password"  # local dev database on loopback; the config reads it from env:DEMO_PG_PASSWORD
DEMO_DB = "demo"
#: The demo's config, shipped beside this module (package data).
CONFIG = Path(__file__).with_name("demo.yaml")

SCHEMA = """
CREATE TABLE IF NOT EXISTS public.articles (
  id SERIAL PRIMARY KEY,
  title TEXT NOT NULL,
  body TEXT NOT NULL,
  category TEXT NOT NULL DEFAULT 'general',
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public.orders (
  id SERIAL PRIMARY KEY,
  customer TEXT NOT NULL,
  amount NUMERIC(12,2) NOT NULL,
  status TEXT NOT NULL DEFAULT 'new',
  ordered_at TIMESTAMP NOT NULL DEFAULT now(),
  attrs JSONB
);
CREATE TABLE IF NOT EXISTS public.audit_log (
  id BIGSERIAL PRIMARY KEY,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""

ARTICLES = [
    ("Resetting a replication slot", "When a connector is deleted its slot stays behind.\n\n"
     "A slot that nobody reads pins WAL on the primary until the disk fills up.\n\n"
     "Drop it with pg_drop_replication_slot once the connector is gone."),
    ("Choosing a processing profile", "Full tables are chunked and embedded for semantic search.\n\n"
     "Index-only tables are mirrored row by row for keyword search and filters.\n\n"
     "Archive tables go to the object store only."),
    ("Warehouse returns policy", "Items can be returned within thirty days.\n\n"
     "Refunds are paid to the original payment method within five working days."),
]


def seed(pg: dict[str, Any]) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                         dbname="postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DEMO_ROLE,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(
                sql.Identifier(DEMO_ROLE), sql.Literal(DEMO_PASSWORD)))
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DB,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DEMO_DB),
                                                                       sql.Identifier(DEMO_ROLE)))
    with psycopg.connect(host=pg["host"], port=pg["port"], user=DEMO_ROLE, password=DEMO_PASSWORD,
                         dbname=DEMO_DB, autocommit=True) as conn:
        conn.execute(SCHEMA)
        row = conn.execute("SELECT count(*) FROM public.articles").fetchone()
        if row is not None and row[0] == 0:
            for title, body in ARTICLES:
                conn.execute("INSERT INTO public.articles (title, body) VALUES (%s, %s)", (title, body))
            for i in range(1, 21):
                conn.execute("INSERT INTO public.orders (customer, amount, status, attrs) VALUES (%s, %s, %s, %s)",
                             (f"customer-{i % 7}", f"{i * 12.5:.2f}", "new" if i % 3 else "paid",
                              '{"gift": %s}' % ("true" if i % 2 else "false")))
            for i in range(10):
                conn.execute("INSERT INTO public.audit_log (actor, action) VALUES (%s, %s)",
                             (f"user{i % 3}", f"login #{i}"))
