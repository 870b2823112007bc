"""The declarative config: connectors, their tables and each table's processing profile.

One YAML file (``cdcstream.yaml`` or ``--config``). Every model forbids unknown keys, so a
typo is an error that names the file, line and field, not a silently ignored setting.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from cdcstream.core.budget import EmbedBudget, parse_budget
from cdcstream.core.events import TableId
from cdcstream.core.secrets import SecretRef


class ConfigError(ValueError):
    """The config is invalid; the message names file, line and field."""


class ProcessingProfile(enum.StrEnum):
    """What the pipeline does with a table's rows."""

    FULL = "full"  # chunk (tiktoken) + embed (OpenAI API) + index (Elasticsearch)
    INDEX_ONLY = "index_only"  # index the row only
    ARCHIVE = "archive"  # object store only

    # Callers ask what a profile does, never which profile it is: a new profile (or a
    # changed one) is then one edit here.
    @property
    def indexes(self) -> bool:
        """Rows are mirrored to Elasticsearch."""
        return self is not ProcessingProfile.ARCHIVE

    @property
    def embeds(self) -> bool:
        """Text columns are chunked and embedded (a chunks index beside the rows index)."""
        return self is ProcessingProfile.FULL

    @property
    def archives(self) -> bool:
        """Change events are written to the object store."""
        return self is ProcessingProfile.ARCHIVE


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class TLS(_Model):
    """TLS to the source database."""

    mode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    ca_file: Path | None = None


SecretField = Annotated[Any, Field(description="A secret reference: env:NAME, file:/path or vault:mount/path#key")]


def _allow_literal(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get("allow_literal_secrets"))


class DatabaseConnection(_Model):
    """How Debezium and the preflight checks reach the source database."""

    kind: Literal["postgres", "mariadb", "mysql"]
    host: str
    port: int = Field(default=0, ge=0, le=65535, description="0 = the kind's default port")
    database: str
    user: SecretField
    password: SecretField
    tls: TLS = TLS()

    @field_validator("user", mode="before")
    @classmethod
    def _user(cls, v: Any, info: ValidationInfo) -> Any:
        # A user name is usually not secret: a plain string stays a plain string.
        if isinstance(v, str) and v.partition(":")[0] not in ("env", "file", "vault"):
            return v
        return SecretRef.parse(v, allow_literal=_allow_literal(info), where="user")

    @field_validator("password", mode="before")
    @classmethod
    def _password(cls, v: Any, info: ValidationInfo) -> SecretRef:
        return SecretRef.parse(v, allow_literal=_allow_literal(info), where="password")

    @property
    def effective_port(self) -> int:
        return self.port or (5432 if self.kind == "postgres" else 3306)


_INTERVAL = re.compile(r"^(-1|[0-9]+(nanos|micros|ms|s|m|h|d))$")


class IndexSettings(_Model):
    """Settings of a table's index (and its chunks index), applied when the index is created
    and kept when a TRUNCATE points the alias at a fresh index."""

    shards: int = Field(default=1, ge=1, le=1024,
                        description="number_of_shards; fixed once the index exists")
    replicas: int = Field(default=0, ge=0, le=32, description="number_of_replicas")
    refresh_interval: str | None = Field(
        default=None, description="How soon writes become searchable, e.g. `1s`, `30s`, `-1` (off); "
                                  "default: Elasticsearch's (1s)")

    @field_validator("refresh_interval")
    @classmethod
    def _interval(cls, v: str | None) -> str | None:
        if v is not None and not _INTERVAL.match(v):
            raise ValueError(f"refresh_interval {v!r}: a number with a unit (ms, s, m, h, d), or -1 for off")
        return v

    def es(self) -> dict[str, Any]:
        """The Elasticsearch index settings."""
        out: dict[str, Any] = {"number_of_shards": self.shards, "number_of_replicas": self.replicas}
        if self.refresh_interval is not None:
            out["refresh_interval"] = self.refresh_interval
        return out


class ConnectorTableConfig(_Model):
    """One captured table and what to do with its rows."""

    name: str = Field(description="schema.table (PostgreSQL) or database.table (MariaDB/MySQL)")
    profile: ProcessingProfile = ProcessingProfile.INDEX_ONLY
    text_columns: tuple[str, ...] = Field(default=(), description="Columns chunked and embedded (profile full)")
    id_columns: tuple[str, ...] = Field(default=(), description="Row identity for tables without a primary key")
    include_columns: tuple[str, ...] = ()
    exclude_columns: tuple[str, ...] = ()
    index: str | None = Field(
        default=None, description="Target index (alias) name; default <connector>-<schema>-<table> (lowercase, "
                                  "`_` as `-`); two tables never share one (refused when the config loads)"
    )
    index_settings: IndexSettings = Field(
        default_factory=IndexSettings, description="Shards, replicas and refresh interval of the table's index "
                                                   "and chunks index")
    embed_budget: str | None = Field(
        default=None, description="Embedding tokens per period for this table, e.g. `2M/day`, `500k/hour`, "
                                  "`300/minute`; past it rows are still indexed and their chunks wait in a queue "
                                  "until the next period (docs/profiles.md, \"Token budgets\")")

    @field_validator("name")
    @classmethod
    def _qualified(cls, v: str) -> str:
        parts = v.split(".")
        if len(parts) != 2 or not all(_IDENT.match(p) for p in parts):
            raise ValueError(f"table name {v!r} must be schema.table (letters, digits, _ and $)")
        return v

    @field_validator("embed_budget", mode="before")
    @classmethod
    def _embed_budget(cls, v: Any) -> Any:
        if v is not None:
            parse_budget(v if isinstance(v, str) else repr(v), "embed_budget")
        return v

    @property
    def budget(self) -> EmbedBudget | None:
        return parse_budget(self.embed_budget) if self.embed_budget else None

    @field_validator("index")
    @classmethod
    def _index_name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError(f"index name {v!r}: lowercase letters, digits, '.', '_' and '-' only (max 63)")
        return v

    @model_validator(mode="after")
    def _profile_rules(self) -> ConnectorTableConfig:
        if self.profile is ProcessingProfile.FULL and not self.text_columns:
            raise ValueError("profile 'full' needs text_columns (the columns to chunk and embed)")
        if self.include_columns and self.exclude_columns:
            raise ValueError("give include_columns or exclude_columns, not both")
        hidden = set(self.text_columns) & set(self.exclude_columns)
        if hidden:
            raise ValueError(f"text column(s) {sorted(hidden)} are also excluded")
        return self

    @property
    def schema_name(self) -> str:
        return self.name.split(".")[0]

    @property
    def table_name(self) -> str:
        return self.name.split(".")[1]


class CredentialsSpec(_Model):
    """How a connector's database credentials reach Kafka Connect (docs/vault.md).

    ``provider``: the config carries ``${dir:<dir>:user}``/``${dir:<dir>:password}``
    placeholders; cdcstream writes the values into files (mode 0600) in ``dir``, which the
    Connect worker's DirectoryConfigProvider reads when a task starts. The plaintext never
    enters Connect's config topic or REST answers.
    ``inline``: the resolved user/password go into the connector config, so Kafka Connect
    stores them in plaintext in its config topic (``connectors plan`` warns).
    Without ``mode`` the connector decides (``ConnectorSpec.credential_mode``): ``provider``
    when its credentials come from a secret reference or ``vault_role``, ``inline`` only for a
    literal password (``allow_literal_secrets``, which is in plaintext in the YAML already).
    ``vault_role``: dynamic credentials from Vault's database engine
    (``<vault_mount>/creds/<vault_role>``), renewed and rotated by ``cdcstream credentials``;
    the connection's user/password are then omitted.
    """

    mode: Literal["inline", "provider"] | None = Field(
        default=None, description="`provider`: Connect reads the values from 0600 files in `dir`, its config topic "
                                  "holds placeholders; `inline`: the plaintext password goes into Connect's config "
                                  "topic (explicit opt-in, `connectors plan` warns). Default: `provider` when the "
                                  "password or user is a secret reference or `vault_role` is set, `inline` for a "
                                  "literal password")
    dir: Path | None = Field(default=None, description="Provider mode: the directory the Connect worker reads "
                                                       "(absolute; default `$CDCSTREAM_CREDENTIALS_DIR/<connector>`)")
    vault_role: str | None = Field(default=None, description="Vault database role for dynamic credentials")
    vault_mount: str = Field(default="database", description="Mount of Vault's database secrets engine")
    owner_role: str | None = Field(default=None, description="PostgreSQL role that owns what cdcstream creates "
                                                             "(signal/heartbeat tables, publication): SET ROLE "
                                                             "to it first, so a revocable dynamic user owns "
                                                             "nothing")

    @field_validator("dir")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        # The Connect worker resolves ${dir:...} in its own working directory: only an absolute path is safe.
        if v is not None and not v.is_absolute():
            raise ValueError(f"credentials dir {str(v)!r} must be an absolute path (the Connect worker reads it)")
        return v

    @field_validator("vault_role", "owner_role")
    @classmethod
    def _ident(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z0-9_.-]{1,63}$", v):
            raise ValueError(f"{v!r}: letters, digits, '_', '.' and '-' only")
        return v


SNAPSHOT_MODES = ("initial", "initial_only", "no_data", "when_needed", "never", "always", "recovery")


class ConnectorSpec(_Model):
    """One Debezium connector: one source database, many tables."""

    name: str
    connection: DatabaseConnection
    topic_prefix: str | None = Field(default=None, description="Debezium topic.prefix; default: the connector name")
    tables: tuple[ConnectorTableConfig, ...]
    snapshot_mode: Literal["initial", "initial_only", "no_data", "when_needed", "never", "always", "recovery"] = (
        "initial"
    )
    heartbeat_interval_ms: int = Field(default=10_000, ge=0)
    signal_table: str | None = Field(default=None, description="schema.table of Debezium's signal table")
    read_only: bool = Field(default=False, description="MariaDB/MySQL: capture without writing to the source (no "
                                                       "signal or heartbeat table): incremental snapshots are "
                                                       "signalled through Kafka and watermarked by GTIDs")
    partitions: int = Field(default=4, ge=1, le=1024, description="Partitions of every topic the connector creates")
    server_id: int | None = Field(default=None, ge=1, le=2**32 - 1, description="MariaDB/MySQL replica server id")
    extra: dict[str, str] = Field(default_factory=dict, description="Extra Debezium properties, passed through")
    override_owned: bool = Field(default=False, description="Let `extra` override properties the builder owns")
    credentials: CredentialsSpec = Field(default_factory=CredentialsSpec,
                                         description="How the credentials reach Kafka Connect (provider files "
                                                     "by default for secret references) and Vault dynamic "
                                                     "credentials")

    @model_validator(mode="before")
    @classmethod
    def _dynamic_user(cls, data: Any) -> Any:
        # With a Vault database role the dynamic user replaces connection.user/password; stand in
        # references naming where they come from, so DatabaseConnection keeps its required fields
        # (and its file:line:field errors) for every other connector.
        if not isinstance(data, dict):
            return data
        creds, conn = data.get("credentials"), data.get("connection")
        if not (isinstance(creds, dict) and creds.get("vault_role") and isinstance(conn, dict)):
            return data
        given = [k for k in ("user", "password") if k in conn]
        if given:
            raise ValueError(f"connection.{' and connection.'.join(given)} must be omitted with "
                             f"credentials.vault_role: Vault's dynamic user replaces them")
        mount = str(creds.get("vault_mount") or "database").strip("/")
        path = f"creds/{creds['vault_role']}"
        return {**data, "connection": {**conn, "user": SecretRef("vault", path, "username", mount),
                                       "password": SecretRef("vault", path, "password", mount)}}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"connector name {v!r}: lowercase letters, digits, '.', '_' and '-' only")
        return v

    @model_validator(mode="after")
    def _read_only(self) -> ConnectorSpec:
        if self.read_only and self.connection.kind == "postgres":
            raise ValueError("read_only: MariaDB/MySQL only (a PostgreSQL connector needs its publication and "
                             "signal table in the source)")
        if self.read_only and self.signal_table:
            raise ValueError("signal_table and read_only exclude each other: read_only signals through Kafka")
        return self

    @model_validator(mode="after")
    def _unique_tables(self) -> ConnectorSpec:
        seen: set[str] = set()
        for t in self.tables:
            if t.name in seen:
                raise ValueError(f"table {t.name} is listed twice")
            seen.add(t.name)
        if not self.tables:
            raise ValueError("a connector needs at least one table")
        return self

    @property
    def credential_mode(self) -> Literal["inline", "provider"]:
        """How the credentials reach Kafka Connect: ``credentials.mode`` when the YAML says, else
        ``provider`` for a secret reference or a Vault role (a referenced secret must not end up in
        plaintext in Connect's config topic) and ``inline`` for a literal password (the YAML holds
        it in plaintext already; ``connectors plan`` warns about both inline cases)."""
        c = self.credentials
        if c.mode is not None:
            return c.mode
        refs = [v for v in (self.connection.user, self.connection.password) if isinstance(v, SecretRef)]
        return "provider" if c.vault_role or any(r.scheme != "literal" for r in refs) else "inline"

    @property
    def prefix(self) -> str:
        return self.topic_prefix or self.name

    def table_id(self, table: ConnectorTableConfig) -> TableId:
        return TableId(self.name, self.connection.database, table.schema_name, table.table_name)

    def index_alias(self, table: ConnectorTableConfig) -> str:
        """The table's index alias: ``index`` if given, else ``<connector>-<schema>-<table>``
        lowercased with ``_`` as ``-`` (so different tables can derive the same name: the
        config refuses that: ``Config._unique_indices``)."""
        if table.index:
            return table.index
        return f"{self.name}-{table.schema_name}-{table.table_name}".lower().replace("_", "-")

    def topic(self, table: ConnectorTableConfig) -> str:
        return f"{self.prefix}.{table.schema_name}.{table.table_name}"


class IndexCollision(ValueError):
    """Two tables would write the same Elasticsearch index; names both (positions for lines)."""

    def __init__(self, name: str, first: tuple[int, int], second: tuple[int, int], message: str) -> None:
        super().__init__(message)
        self.name, self.first, self.second = name, first, second


CHUNKS_SUFFIX = "-chunks"


class Config(_Model):
    """The whole file."""

    connectors: tuple[ConnectorSpec, ...] = ()
    allow_literal_secrets: bool = False

    @model_validator(mode="after")
    def _unique(self) -> Config:
        names: set[str] = set()
        prefixes: set[str] = set()
        for c in self.connectors:
            if c.name in names:
                raise ValueError(f"connector {c.name} is declared twice")
            if c.prefix in prefixes:
                raise ValueError(f"topic prefix {c.prefix} is used by two connectors; their topics would mix")
            names.add(c.name)
            prefixes.add(c.prefix)
        self._unique_indices()
        return self

    def _unique_indices(self) -> None:
        """Refuse two tables that would share an index: the same alias (derived or ``index:``),
        or one table's alias equal to another's chunks index (``<alias>-chunks``, which any
        table gets when it runs the ``full`` profile: profiles switch at runtime)."""
        owners: dict[str, tuple[int, int, str, str]] = {}
        for ci, c in enumerate(self.connectors):
            for ti, t in enumerate(c.tables):
                alias = c.index_alias(t)
                what = f"{c.name}/{t.name}"
                for name, role in ((alias, "index"), (alias + CHUNKS_SUFFIX, "chunks index")):
                    prev = owners.get(name)
                    if prev is not None:
                        raise IndexCollision(name, (prev[0], prev[1]), (ci, ti),
                                             f"Elasticsearch index name {name!r} is both the {prev[3]} of table "
                                             f"{prev[2]} and the {role} of table {what}; give one of them "
                                             f"another `index:`")
                    owners[name] = (ci, ti, what, role)

    def tables(self) -> Iterator[tuple[ConnectorSpec, ConnectorTableConfig]]:
        for c in self.connectors:
            for t in c.tables:
                yield c, t

    def topic_map(self) -> dict[str, TableId]:
        return {c.topic(t): c.table_id(t) for c, t in self.tables()}

    def connector(self, name: str) -> ConnectorSpec:
        for c in self.connectors:
            if c.name == name:
                return c
        raise KeyError(f"no connector named {name!r}; declared: {', '.join(c.name for c in self.connectors)}")


# --- loading with line numbers ---------------------------------------------------
def _line_of(node: Any, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the deepest node of ``loc`` that the YAML tree has."""
    line: int | None = None
    for part in loc:
        if isinstance(node, CommentedMap) and isinstance(part, str) and part in node:
            pos = node.lc.key(part)
            line = pos[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            pos = node.lc.item(part)
            line = pos[0] + 1
            node = node[part]
        else:
            break
    return line


def _describe(data: Any, loc: tuple[int | str, ...]) -> str:
    """``connectors[0] (demo-pg).tables[2] (public.x).profile`` – names make positions readable."""
    out: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int):
            out[-1] += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out[-1] += f" ({node['name']})"
        else:
            out.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return ".".join(out)


def _collision(path: Path, data: Any, c: IndexCollision) -> str:
    """``file:line: connectors[1] (b).tables[0] (x): ...`` pointing at the second table, naming the first's line."""
    def where(pos: tuple[int, int]) -> tuple[int, str]:
        loc: tuple[int | str, ...] = ("connectors", pos[0], "tables", pos[1])
        line = _line_of(data, (*loc, "index")) or _line_of(data, (*loc, "name")) or _line_of(data, loc) or 1
        return line, _describe(data, loc)

    (l1, d1), (l2, d2) = where(c.first), where(c.second)
    return f"{path}:{l2}: {d2}: {c} (the other is {d1}, line {l1})"


def load_config(path: str | Path) -> Config:
    path = Path(path)
    yaml = YAML(typ="rt")
    try:
        data = yaml.load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {e.problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the top level must be a mapping with 'connectors'")
    try:
        # The flag must be known before the connections are validated: pass it as context.
        return Config.model_validate(data, context={"allow_literal_secrets": data.get("allow_literal_secrets") is True})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, IndexCollision):
                lines.append(_collision(path, data, cause))
                continue
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            line = _line_of(data, loc)
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{path}:{line or 1}: {_describe(data, loc) or '(top level)'}: {msg}")
        raise ConfigError("\n".join(lines)) from None
