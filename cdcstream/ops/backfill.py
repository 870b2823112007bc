"""Backfill cost estimates for the profile API: what bringing a table into ``full`` costs.

rows × average tokens of the text columns per row × price per million tokens. Tokens are
counted with the chunk encoding, as the pipeline counts ``embed_tokens``. The average
comes from a sample of rows read from the source database; when the source cannot be
read, from a sample of the table's row index in Elasticsearch. It is an upper bound:
chunks already in the embedding cache are not paid again.

Everything here is blocking (database, tiktoken): call it in an executor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cdcstream.core.route import Route

if TYPE_CHECKING:
    from cdcstream.core.resolver import Resolver

SAMPLE_ROWS = 200


@dataclass
class Estimate:
    rows: int
    sampled_rows: int
    avg_tokens_per_row: float
    tokens: int
    price_per_million_tokens: float
    cost_usd: float
    source: str  # "database" | "index"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(rows: int, texts: list[str], encoding: str, price_per_million: float, source: str) -> Estimate:
    from cdcstream.pipeline.tokens import get_encoding

    enc = get_encoding(encoding)
    counts = [len(enc.encode(t, disallowed_special=())) for t in texts]
    avg = sum(counts) / len(counts) if counts else 0.0
    tokens = round(avg * rows)
    return Estimate(rows, len(counts), round(avg, 1), tokens, price_per_million,
                    round(tokens / 1_000_000 * price_per_million, 8), source)


def sample_source(route: Route, resolver: Resolver) -> tuple[int, list[str]]:
    """Row count and up to SAMPLE_ROWS concatenated text-column values from the source table."""
    from cdcstream.ops.credentials import resolve_credentials
    from cdcstream.ops.sourcedb import connect_mariadb, connect_postgres

    spec, t = route.connector, route.table
    creds = resolve_credentials(spec, resolver)
    cols = list(t.text_columns)
    if spec.connection.kind == "postgres":
        from psycopg import sql

        tbl = sql.Identifier(t.schema_name, t.table_name)
        with connect_postgres(spec, creds) as conn:
            n = int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(tbl)).fetchone()[0])
            q = sql.SQL("SELECT concat_ws(E'\\n', {}) FROM {} LIMIT {}").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in cols), tbl,
                sql.Literal(SAMPLE_ROWS))
            texts = [r[0] or "" for r in conn.execute(q).fetchall()]
        return n, texts

    def quoted(name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    with connect_mariadb(spec, creds) as conn, conn.cursor() as cur:
        my_tbl = f"{quoted(t.schema_name)}.{quoted(t.table_name)}"
        cur.execute(f"SELECT COUNT(*) FROM {my_tbl}")  # noqa: S608 - quoted identifiers from the config
        n = int(cur.fetchone()[0])
        cur.execute(f"SELECT CONCAT_WS('\\n', {', '.join(quoted(c) for c in cols)}) FROM {my_tbl} "  # noqa: S608
                    f"LIMIT {SAMPLE_ROWS}")
        texts = [r[0] or "" for r in cur.fetchall()]
    return n, texts


def texts_from_docs(docs: list[dict[str, Any]], columns: tuple[str, ...]) -> list[str]:
    return ["\n".join(str(d.get(c) or "") for c in columns) for d in docs]
