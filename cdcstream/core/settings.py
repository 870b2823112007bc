"""Worker settings: every one typed, defaulted, documented, and read from ``CDCSTREAM_<NAME>``.

``docs/settings.md`` is generated from this class (``cdcstream settings --markdown``).
Backends are chosen by URL scheme: ``es://`` / ``ess://`` (Elasticsearch over http/https),
``s3://`` / ``file://`` (archive), ``openai://`` / ``openais://`` (embeddings).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cdcstream.core.budget import EmbedBudget, parse_budget
from cdcstream.core.masking import mask_text
from cdcstream.core.secrets import SecretRef


def _ref(v: Any, where: str) -> SecretRef | None:
    return None if v in (None, "") else SecretRef.parse(v, where=where)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the web server reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        # A host name other than localhost may resolve to anything: treated as exposed.
        return False


class ApiTokenSpec(BaseModel):
    """One bearer token of the worker API: who it is (``name``, shown in logs instead of the
    value), what it may do (``role``) and, for a ``read`` token, optionally which tables it may
    search (then it may call nothing but search)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    role: Literal["read", "admin"]
    token: SecretRef
    tables: tuple[str, ...] = ()

    @field_validator("token", mode="before")
    @classmethod
    def _token(cls, v: Any) -> SecretRef:
        return SecretRef.parse(v, where="api_tokens[].token")

    @model_validator(mode="after")
    def _scoped_read_only(self) -> ApiTokenSpec:
        if self.tables and self.role != "read":
            raise ValueError(f"api token {self.name!r}: only a read token can be limited to tables")
        return self


class Settings(BaseSettings):
    # Validation errors would otherwise quote the input, user:password@ of a URL included.
    model_config = SettingsConfigDict(env_prefix="CDCSTREAM_", extra="forbid", frozen=True,
                                      hide_input_in_errors=True)

    # --- app ----------------------------------------------------------------------------
    app_id: str = Field("cdcstream", description="Faust app id: prefix of consumer group, internal topics and state.")
    config: Path = Field(Path("cdcstream.yaml"), description="The connectors/tables YAML file.")
    broker: str = Field("kafka://127.0.0.1:9092", description="Kafka bootstrap servers (kafka://host:port;...).")
    store: str = Field("rocksdb://", description="Faust table store: rocksdb:// (durable local cache) or memory://.")
    data_dir: Path = Field(Path(".stack/worker"), description="Where RocksDB and Faust keep local state "
                                                              "(one directory per app id below it).")
    web_host: str = Field("127.0.0.1", description="Status pages and API bind address. Anything but loopback "
                          "requires a token for every endpoint except /healthz; without one the worker refuses "
                          "to start.")
    web_port: int = Field(6066, description="Status pages and API port.")
    web_tls_cert: Path | None = Field(None, description="PEM certificate chain (server certificate first): the "
                                      "worker serves its pages and API over HTTPS only (plain HTTP to the port "
                                      "fails). Needs web_tls_key. The CLI then talks https to the worker.")
    web_tls_key: Any = Field(None, description="The certificate's private key (unencrypted PEM): a path or a "
                             "secret reference (file:/path, env:NAME, vault:mount/path#key).")
    worker_url: str | None = Field(None, description="Where the CLI reaches the worker API, e.g. "
                                   "`https://cdc.example.internal:6066`; default: from web_host, web_port and "
                                   "web_tls_cert (https when set; 127.0.0.1 for a worker bound to every interface).")
    worker_ca: Path | None = Field(None, description="CA bundle the CLI verifies the worker's HTTPS certificate "
                                   "with, for the worker API only (otherwise requests' default store, which "
                                   "REQUESTS_CA_BUNDLE replaces for every HTTPS call of the process).")
    partitions: int = Field(4, ge=1, description="Partitions of every captured topic and of the per-row tables; "
                                                  "`cdcstream topics plan` checks they agree.")
    replication_factor: int = Field(1, ge=1, description="Replication factor of the internal topics.")
    batch_size: int = Field(500, ge=1, description="Events per processing batch (one bulk request per batch).")
    batch_wait_s: float = Field(0.3, gt=0, description="Longest wait to fill a batch.")
    session_timeout_s: float = Field(15.0, ge=6, description="Kafka consumer-group session timeout: how long a "
                                     "killed worker's partitions wait before another worker takes them over.")
    read_ahead: int = Field(2000, ge=1, description="Events fetched ahead of processing (Faust's stream buffer and "
                            "records per poll). When a sink stalls, events in flight stay under 2 x read_ahead + "
                            "batch_size (+ archive records held until their object fills); the rest waits in Kafka.")
    changelog_linger_s: float = Field(0.02, ge=0, le=1, description="How long the worker's Kafka producer waits "
                                      "to fill a batch of row-state changelog records (Faust's producer_linger). "
                                      "0 sends each write at once: measured 18-25% more worker CPU per event "
                                      "(docs/benchmarks.md); the wait delays no search result, only the commit.")
    connect_url: str = Field("http://127.0.0.1:8083", description="Kafka Connect REST API.")

    # --- Elasticsearch ------------------------------------------------------------------
    elasticsearch_url: str | None = Field("es://127.0.0.1:9200", description="es://host:port (http) or "
                                          "ess://host:port (https); empty disables indexing.")
    elasticsearch_user: Any = Field(None, description="Secret reference of the Elasticsearch user.")
    elasticsearch_password: Any = Field(None, description="Secret reference of the Elasticsearch password.")
    elasticsearch_api_key: Any = Field(None, description="Secret reference of an Elasticsearch API key.")
    elasticsearch_ca: Path | None = Field(None, description="CA bundle for ess://.")

    # --- archive ------------------------------------------------------------------------
    archive_url: str | None = Field(None, description="file:///path or s3://bucket/prefix?endpoint=http://...; "
                                                      "empty disables the archive profile.")
    archive_access_key: Any = Field(None, description="Secret reference of the S3 access key.")
    archive_secret_key: Any = Field(None, description="Secret reference of the S3 secret key.")
    archive_max_records: int = Field(5000, ge=1, description="Records per archive object (a flush boundary).")
    archive_max_bytes: int = Field(8 << 20, ge=1024, description="Uncompressed bytes per archive object.")
    archive_max_wait_s: float | None = Field(60.0, ge=0, description="Seconds the oldest buffered archive event "
                                             "waits before its object is cut and stored anyway (a quiet table "
                                             "still reaches the store); cuts are recorded first, so replays "
                                             "cut the same objects. 0 or empty: only count/size cuts.")

    # --- embeddings ---------------------------------------------------------------------
    embed_url: str | None = Field("openai://127.0.0.1:8000/v1", description="openai://host:port/path (http) or "
                                  "openais://... (https); empty disables the full profile.")
    embed_api_key: Any = Field(None, description="Secret reference of the API key.")
    embed_model: str = Field("multilingual-e5-small-q4", description="Embedding model id.")
    embed_dimensions: int = Field(384, ge=1, description="Vector dimensions (must match the model).")
    embed_max_input_tokens: int = Field(512, ge=16, description="The served model's per-input limit "
                                                                "(OpenAI: 8192).")
    embed_concurrency: int = Field(2, ge=1, description="Concurrent embedding requests per worker.")
    embed_max_inputs: int = Field(64, ge=1, le=2048, description="Inputs per request (OpenAI allows 2048; a "
                                  "self-hosted CPU model must answer one request within embed_timeout_s).")
    embed_timeout_s: float = Field(120.0, gt=0, description="Timeout of one embedding request.")
    embed_tokens_per_minute: int | None = Field(None, description="Tokens-per-minute budget (account tier).")
    embed_budget: str | None = Field(None, description="Embedding tokens per period for all tables together, e.g. "
                                     "`10M/day` (k = thousand, M = million; periods minute, hour, day, aligned to "
                                     "UTC). Past it rows are still indexed; their chunks wait in a queue for the "
                                     "next period. Per table: `embed_budget` in the YAML.")
    embed_budget_check_s: float = Field(5.0, gt=0, description="How often the queue of chunks waiting for a "
                                        "budget is counted and, in a new period, sent (oldest first).")
    embed_budget_margin: float = Field(2.0, ge=1.0, description="For a served model tiktoken does not know (its "
                                       "server counts with its own tokenizer): a chunk is reserved at this many "
                                       "times its tiktoken count plus 8 tokens before it is sent, and charged what "
                                       "the server reports (usage.prompt_tokens) after. OpenAI's models: exact.")
    embed_send_dimensions: bool = Field(False, description="Send `dimensions` (text-embedding-3-* only).")
    chunk_encoding: str = Field("cl100k_base", description="tiktoken encoding used to count and cut chunks.")
    chunk_tokens: int = Field(200, ge=16, description="Tokens per chunk; capped below embed_max_input_tokens.")
    chunk_overlap: int = Field(24, ge=0, description="Overlap of windows when one paragraph exceeds a chunk.")
    embed_query_input_type: str | None = Field("query", description="Sent as `input_type` with search-query "
                                               "embeddings (e5 servers then add the `query: ` prefix themselves); "
                                               "empty for servers that reject unknown fields.")
    embed_query_prefix: str = Field("", description="Prepended to search queries before embedding, for e5 models "
                                                    "behind servers without `input_type` (e.g. `query: `).")
    embed_price_per_million_tokens: float = Field(0.02, ge=0, description="Embedding price in USD per million "
                                                  "tokens: the backfill cost estimate of the profile API.")

    # --- Vault --------------------------------------------------------------------------
    vault_addr: str | None = Field(None, description="Vault address; enables vault: secret references. Unset: "
                                   "$VAULT_ADDR, as for the Vault CLI (with auth token, the token is $VAULT_TOKEN).")
    vault_auth: str = Field("token", description="Vault auth method: token, approle, jwt or kubernetes.")
    vault_token_file: Path | None = Field(None, description="File holding a Vault token (auth token; "
                                                            "else $VAULT_TOKEN).")
    vault_role_id: str | None = Field(None, description="AppRole role id (auth approle).")
    vault_secret_id_file: Path | None = Field(None, description="File holding the AppRole secret id.")
    vault_role: str | None = Field(None, description="Role for jwt/kubernetes auth.")
    vault_jwt_file: Path | None = Field(None, description="JWT file for jwt auth (kubernetes: the service-account "
                                                          "token by default).")
    vault_auth_mount: str | None = Field(None, description="Auth mount path when not the method's default.")
    vault_ca_bundle: Path | None = Field(None, description="CA bundle for Vault's TLS certificate.")
    vault_verify: bool = Field(True, description="Verify Vault's TLS certificate (false only for a dev server).")
    credentials_dir: Path = Field(Path("~/.local/state/cdcstream/credentials"),
                                  description="Provider-mode credential files and dynamic-credential lease state, "
                                  "one directory per connector (the Connect worker must be able to read it). `~` "
                                  "expands; a relative path is taken from the directory the command runs in, so "
                                  "give an absolute one.")

    # --- security -----------------------------------------------------------------------
    api_token: Any = Field(None, description="Secret reference of the `admin` bearer token (profile changes, "
                           "backfills, DLQ values, replay and skip; it may read too).")
    api_read_token: Any = Field(None, description="Secret reference of the `read` bearer token (status, metrics, "
                                "tables, connectors, workers, DLQ previews, search).")
    api_tokens: tuple[ApiTokenSpec, ...] = Field((), description="Further tokens, as JSON: "
                                                 "`[{\"name\": \"shop\", \"role\": \"read\", \"token\": "
                                                 "\"env:SHOP_TOKEN\", \"tables\": [\"demo-pg.public.orders\"]}]`; "
                                                 "a read token with `tables` may only search those tables.")
    protect_reads: bool = Field(False, description="Require a token for reads on a loopback bind address too "
                                "(beyond loopback they always need one).")
    api_semantic_per_minute: int = Field(30, ge=1, description="Semantic and hybrid searches per minute per token "
                                         "(each new query may be a paid embeddings call); more answer 429.")
    status_sample_s: float = Field(5.0, gt=0, description="Interval of the throughput/lag samples drawn on /status.")
    status_samples: int = Field(120, ge=2, description="Samples kept per worker for the /status chart.")

    @field_validator("elasticsearch_user", "elasticsearch_password", "elasticsearch_api_key", "archive_access_key",
                     "archive_secret_key", "embed_api_key", "api_token", "api_read_token", mode="before")
    @classmethod
    def _secret(cls, v: Any, info: Any) -> SecretRef | None:
        return _ref(v, info.field_name)

    @field_validator("credentials_dir")
    @classmethod
    def _expand_home(cls, v: Path) -> Path:
        # The connector config names this path (${dir:<path>:password}): it must mean the same
        # directory for every command, wherever it runs (a default under the working directory
        # made `delete --drop-slot` from another directory re-create the connector with a
        # placeholder to nowhere, which Kafka Connect answered with HTTP 500).
        return v.expanduser()

    @field_validator("embed_budget")
    @classmethod
    def _embed_budget(cls, v: str | None) -> str | None:
        if v:
            parse_budget(v, "embed_budget (CDCSTREAM_EMBED_BUDGET)")
        return v or None

    @property
    def budget(self) -> EmbedBudget | None:
        return parse_budget(self.embed_budget) if self.embed_budget else None

    @field_validator("web_tls_key", mode="before")
    @classmethod
    def _tls_key(cls, v: Any) -> SecretRef | None:
        # A key file is the usual form: a bare absolute path means file:<path>.
        return _ref(f"file:{v}" if isinstance(v, str) and v.startswith("/") else v, "web_tls_key")

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.web_tls_cert is None) != (self.web_tls_key is None):
            raise ValueError("web_tls_cert and web_tls_key go together (CDCSTREAM_WEB_TLS_CERT, CDCSTREAM_WEB_TLS_KEY)")
        return self

    @field_validator("elasticsearch_url")
    @classmethod
    def _es(cls, v: str | None) -> str | None:
        if v and urlparse(v).scheme not in ("es", "ess", "http", "https"):
            raise ValueError(f"elasticsearch_url {mask_text(v)!r}: scheme must be es:// or ess://")
        return v or None

    @field_validator("embed_url")
    @classmethod
    def _embed(cls, v: str | None) -> str | None:
        if v and urlparse(v).scheme not in ("openai", "openais", "http", "https"):
            raise ValueError(f"embed_url {mask_text(v)!r}: scheme must be openai:// or openais://")
        return v or None

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _tokens_json(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return json.loads(v) if v.strip() else ()
            except ValueError:
                raise ValueError("api_tokens must be a JSON list of {name, role, token[, tables]}") from None
        return v

    @model_validator(mode="after")
    def _unique_token_names(self) -> Settings:
        names = [t.name for t in self.api_tokens]
        taken = {"admin", "read", "anonymous"}
        dup = sorted({n for n in names if names.count(n) > 1 or n in taken})
        if dup:
            raise ValueError(f"api_tokens: names must be unique and not admin/read/anonymous: {', '.join(dup)}")
        return self

    @field_serializer("broker", "connect_url", "elasticsearch_url", "archive_url", "embed_url", "vault_addr")
    def _url_without_password(self, v: str | None) -> str | None:
        # `cdcstream settings` prints model_dump(): a URL's user-info password must not show.
        return None if v is None else mask_text(v)

    @property
    def web_exposed(self) -> bool:
        """The web server is reachable from other machines: every endpoint but /healthz needs a token."""
        return not is_loopback(self.web_host)

    @property
    def web_tls(self) -> bool:
        return self.web_tls_cert is not None

    @property
    def worker_api_url(self) -> str:
        """Where the CLI reaches the worker's API: ``worker_url``, else this worker's own address (one
        bound to every interface answers on loopback)."""
        if self.worker_url:
            return self.worker_url.rstrip("/")
        host = "127.0.0.1" if self.web_host in ("0.0.0.0", "::", "") else self.web_host  # noqa: S104 - a comparison
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.web_tls else 'http'}://{host}:{self.web_port}"

    @property
    def worker_verify(self) -> str | bool:
        """``verify=`` for requests to the worker API: ``worker_ca`` when set, else requests' default."""
        return str(self.worker_ca) if self.worker_ca is not None else True

    @property
    def reads_open(self) -> bool:
        return not self.web_exposed and not self.protect_reads

    @property
    def has_api_token(self) -> bool:
        return self.api_token is not None or self.api_read_token is not None or bool(self.api_tokens)

    @property
    def es_http_url(self) -> str | None:
        if not self.elasticsearch_url:
            return None
        u = urlparse(self.elasticsearch_url)
        scheme = {"es": "http", "ess": "https"}.get(u.scheme, u.scheme)
        return f"{scheme}://{u.netloc}{u.path}"

    @property
    def embed_base_url(self) -> str | None:
        if not self.embed_url:
            return None
        u = urlparse(self.embed_url)
        scheme = {"openai": "http", "openais": "https"}.get(u.scheme, u.scheme)
        return f"{scheme}://{u.netloc}{u.path}"

    @property
    def effective_chunk_tokens(self) -> int:
        # cl100k counts differ from the served model's tokenizer (e5: XLM-R); keep a 40% margin.
        return min(self.chunk_tokens, int(self.embed_max_input_tokens * 0.6))

    @property
    def effective_chunk_overlap(self) -> int:
        return min(self.chunk_overlap, self.effective_chunk_tokens // 4)

    @property
    def kafka_bootstrap(self) -> str:
        return ",".join(h.removeprefix("kafka://") for h in self.broker.split(";"))


def settings_markdown() -> str:
    lines = ["# Settings reference", "",
             "Generated from `cdcstream/core/settings.py` by `cdcstream settings --markdown`.",
             "Every setting is read from the environment variable shown.", "",
             "| setting | env var | type | default | description |", "|---|---|---|---|---|"]
    for name, f in Settings.model_fields.items():
        typ = getattr(f.annotation, "__name__", str(f.annotation)).replace("|", "or")
        default = "" if f.default is None else f"`{f.default}`"
        desc = (f.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | `CDCSTREAM_{name.upper()}` | {typ} | {default} | {desc} |")
    return "\n".join(lines) + "\n"
