"""Elasticsearch 8.19 from Elastic's test distribution on Maven Central, run as an unprivileged user.

Artifact: ``org.elasticsearch.distribution.integ-test-zip:elasticsearch:8.19.21:zip`` (107 MB zip,
119 MB unpacked). 8.19.21 is the newest version Maven Central lists (no 9.x is published there:
9.0.0 … 9.3.0 are refused; the 9.x server jars are served but not the launcher and entitlement
agent a 9.x node needs to start; docs/operations.md, "Elasticsearch 9"), runs on Java 17 and
matches the Python client 8. The zip has no bundled JDK: ``ES_JAVA_HOME`` is set from ``java_home()``.

What the distribution holds (probed on 8.19.21, Java 17, security off unless said):

- ``modules/``: apm, transport-netty4, x-pack-core, x-pack-security. ``plugins/`` is empty, and
  ``org.elasticsearch.plugin:analysis-common`` / ``lang-painless`` are not on Maven Central.
- Works: create/delete index, mappings (text, keyword, numbers, date_nanos, ip, binary, object,
  nested, flattened, geo_point, completion, sparse_vector); dense_vector with index true (default
  ``int8_hnsw``; hnsw, int4_hnsw, bbq_hnsw, flat, byte/bit elements, cosine/dot_product/l2_norm/
  max_inner_product all accepted); the ``knn`` option of ``_search`` (with ``filter``,
  ``rescore_vector``), the ``knn`` query, the ``knn`` and ``standard`` retrievers, query + knn
  hybrid by score sum; ``_bulk`` (incl. ``version_type=external``: stale versions give 409,
  deletes too, and a delete leaves a tombstone for ``index.gc_deletes``), ``if_seq_no``;
  ``_update`` with a partial doc and ``doc_as_upsert``; ``_mget``, ``_count``, ``_msearch``,
  ``_explain``; scroll; point-in-time + ``search_after``; aliases (incl. ``is_write_index`` and
  filtered); highlight; collapse; rescore; match/multi_match/term/query_string/function_score;
  aggregations terms/cardinality/histogram/composite; ``_source`` excludes; index templates;
  ``_cat``, ``_tasks``, ``_refresh``, ``refresh=wait_for``; analyzers standard, simple,
  whitespace, keyword, stop and filters lowercase, stop, shingle.
- Lacks (no module): ``GET /`` and ``HEAD /`` (rest-root: answer 405, so the Python client's
  ``info()`` raises and ``ping()`` returns False; use ``cluster.health()``); analysis-common (the
  english/snowball/pattern/fingerprint analyzers, html_strip, asciifolding, stemmer, snowball,
  synonym filters, ngram/edge_ngram tokenizers); painless (script_score, ``_update`` with a
  script, runtime fields); reindex (``_reindex``, ``_delete_by_query``, ``_update_by_query``, and
  so the synonyms API); mapper-extras (scaled_float, search_as_you_type, token_count,
  rank_feature, match_only_text); x-pack field types (wildcard, constant_keyword,
  unsigned_long, version, histogram, aggregate_metric_double, counted_keyword, geo_shape,
  semantic_text); parent-join, percolator; the ``rrf`` retriever; the aggregations module
  (adjacency_matrix...); lang-mustache search templates; ingest-common processors; data streams;
  ILM; SQL; ES|QL; inference endpoints. Snapshots need ``path.repo`` (not set).
- Security can be enabled (``SecureElasticsearchService``): basic auth against the file realm
  (a user made with ``elasticsearch-users``) works, anonymous and wrong passwords get 401. API
  keys, native users and roles do NOT: the ``.security`` index's mapping needs the
  ``pattern_capture`` filter from analysis-common, so they fail with "Unknown filter type
  [pattern_capture]" (and the node logs that warning).

Of the download switches only ``xpack.ml.enabled`` exists (x-pack-core) and is set false;
``ingest.geoip.downloader.enabled`` is unknown here (no ingest-geoip module, nothing to
download) and passing it would stop the node from starting.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import threading
import zipfile
from pathlib import Path
from typing import Any, ClassVar

from cdcstream.stack.base import Service, StackError, building, chown_tree, http_get, run

ES_VERSION = "8.19.21"
ARTIFACT = f"org.elasticsearch.distribution.integ-test-zip:elasticsearch:{ES_VERSION}:zip"
HEAP = "-Xms512m -Xmx512m"

#: File-realm superuser of the secured dev instance; loopback only, never a real credential.
SECURE_USER = "cdcstream"
SECURE_PASSWORD = "cdcstream-dev-password"


def java_home() -> Path:
    """The JDK the server runs on: ES_JAVA_HOME, JAVA_HOME, else the ``java`` on PATH (17+ for ES 8)."""
    for var in ("ES_JAVA_HOME", "JAVA_HOME"):
        cand = os.environ.get(var)
        if cand and (Path(cand) / "bin" / "java").is_file():
            return Path(cand)
    java = shutil.which("java")
    if java is None:
        raise StackError("elasticsearch: no java found; install a JDK 17 or newer (or set ES_JAVA_HOME)")
    return Path(os.path.realpath(java)).parent.parent


def _extract(archive: Path, dest: Path) -> None:
    """Unzip without the top-level directory, keeping the executable bits and making everything world-readable.

    Python's zipfile drops modes and ``unzip`` is not on every machine; the server runs as another user.
    """
    with zipfile.ZipFile(archive) as zf:
        for entry in zf.infolist():
            parts = Path(entry.filename).parts[1:]
            if not parts:
                continue
            if ".." in parts or Path(entry.filename).is_absolute():
                raise StackError(f"elasticsearch: unsafe path in {archive.name}: {entry.filename}")
            target = dest.joinpath(*parts)
            if entry.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(entry) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
            executable = (entry.external_attr >> 16) & stat.S_IXUSR
            target.chmod(0o755 if executable else 0o644)
    for root, _dirs, _files in os.walk(dest):
        os.chmod(root, 0o755)  # noqa: S103 - the server runs as another user and must read its home


_MIRROR_LOCK = threading.Lock()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class ElasticsearchService(Service):
    name = "elasticsearch"
    version = ES_VERSION
    ports = (9200, 9300)
    unprivileged = True  # Elasticsearch refuses to run as root
    start_timeout = 180.0
    secure: ClassVar[bool] = False

    @property
    def artifacts(self) -> Path:
        # Shared by the secured instance, whose name differs.
        return self.paths.cache / f"elasticsearch-{self.version}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def info(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.ports[0]}

    @property
    def conf(self) -> Path:
        return self.data / "config"

    # --- install ---------------------------------------------------------------
    def install(self) -> None:
        if shutil.which("mvn") is None:
            raise StackError("elasticsearch: mvn not found; install Maven (apt-get install maven)")
        with building(self.artifacts) as tmp:
            download = tmp / ".download"
            run(["mvn", "-B", "-q", "dependency:copy", f"-Dartifact={ARTIFACT}", f"-DoutputDirectory={download}"],
                cwd=tmp, what="elasticsearch: mvn dependency:copy")
            _extract(download / f"elasticsearch-{self.version}.zip", tmp)
            shutil.rmtree(download)
            tmp.chmod(0o755)  # mkdtemp makes it 0700; the service user must get in
            self.mark_complete(tmp)

    # --- the distribution as seen by the service user --------------------------
    def home(self) -> Path:
        """ES_HOME: the cache itself when the service user can reach it, else a hard-linked mirror.

        As root the cache lies under /root (mode 0700); rather than opening /root to others, the
        distribution is mirrored by hard links (a copy across file systems) into the clone's state.
        It sits outside ``self.data`` because the manager chowns that tree, and chowning a hard
        link would hand the cache's files to the service user.
        """
        user = self.user
        if user is None or self._reachable_by(user):
            return self.artifacts
        mirror = self.paths.state / "opt" / f"elasticsearch-{self.version}"
        stamp = (self.artifacts / ".complete").read_text()
        # Both nodes (plain and secure) start in parallel threads and share this mirror: a
        # second build would rename over the first's tree while its JVM starts from it.
        with _MIRROR_LOCK:
            if (mirror / ".complete").is_file() and (mirror / ".complete").read_text() == stamp:
                return mirror
            with building(mirror) as tmp:
                shutil.copytree(self.artifacts, tmp, copy_function=_link_or_copy, dirs_exist_ok=True)
                tmp.chmod(0o755)
        return mirror

    def _reachable_by(self, user: str) -> bool:
        try:
            run(["test", "-x", str(self.artifacts / "bin" / "elasticsearch")], user=user, timeout=10)
        except StackError:
            return False
        return True

    # --- configuration ---------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "cluster.name": "cdcstream-dev",
            "node.name": self.name,
            "path.data": str(self.data / "data"),
            "path.logs": str(self.data / "logs"),
            "network.host": "127.0.0.1",
            "http.port": self.ports[0],
            "transport.port": self.ports[1],
            "discovery.type": "single-node",
            # Dev disks are often 90 % full; the default watermarks would make every index read-only.
            "cluster.routing.allocation.disk.threshold_enabled": False,
            # x-pack-core knows this setting though the ML module is absent; off, in case it ever appears.
            "xpack.ml.enabled": False,
            "xpack.security.enabled": self.secure,
        }
        if self.secure:
            # Plain HTTP on loopback: the test exercises authentication, not TLS.
            s |= {"xpack.security.http.ssl.enabled": False, "xpack.security.transport.ssl.enabled": False,
                  "xpack.security.authc.api_key.enabled": True}
        return s

    def env(self) -> dict[str, str]:
        return {"ES_JAVA_HOME": str(java_home()), "ES_PATH_CONF": str(self.conf), "ES_JAVA_OPTS": HEAP,
                "ES_TMPDIR": str(self.data / "tmp")}

    def prepare(self) -> None:
        home = self.home()
        if not (self.conf / "elasticsearch.yml").exists():
            shutil.copytree(home / "config", self.conf, dirs_exist_ok=True)
        # JSON scalars are valid YAML and need no quoting rules of our own.
        (self.conf / "elasticsearch.yml").write_text(
            "".join(f"{k}: {json.dumps(v)}\n" for k, v in self.settings().items()))
        # The stock GC log keeps 32 files of 64 MB; not worth it on a dev machine.
        options = (home / "config" / "jvm.options").read_text().splitlines()
        (self.conf / "jvm.options").write_text(
            "".join(line + "\n" for line in options if "-Xlog:gc" not in line))
        for d in ("data", "logs", "tmp"):
            (self.data / d).mkdir(parents=True, exist_ok=True)
        chown_tree(self.data, self.user)
        if self.secure:
            self._ensure_user()

    def _ensure_user(self) -> None:
        users = self.conf / "users"
        if users.exists() and any(line.startswith(f"{SECURE_USER}:") for line in users.read_text().splitlines()):
            return
        run([self.home() / "bin" / "elasticsearch-users", "useradd", SECURE_USER, "-p", SECURE_PASSWORD,
             "-r", "superuser"], env=self.env(), user=self.user, timeout=120,
            what="elasticsearch: elasticsearch-users useradd")

    def command(self) -> list[str]:
        return [str(self.home() / "bin" / "elasticsearch")]

    # --- health ----------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        if not self.secure:
            return {}
        token = base64.b64encode(f"{SECURE_USER}:{SECURE_PASSWORD}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def healthy(self) -> bool:
        status, body = http_get(f"{self.url}/_cluster/health", timeout=3, headers=self.auth_headers())
        if status != 200:
            return False
        try:
            health = json.loads(body)
        except ValueError:
            return False
        return isinstance(health, dict) and health.get("status") in ("green", "yellow")

    def post_start(self) -> None:
        status, _ = http_get(f"{self.url}/_cluster/health", timeout=5)
        if self.secure and status != 401:
            raise StackError(f"elasticsearch: {self.name} answered {status} without credentials; expected 401")
        if not self.secure and status != 200:
            raise StackError(f"elasticsearch: {self.name} answered {status} to an anonymous request; expected 200")


class SecureElasticsearchService(ElasticsearchService):
    """A second node with security on: file-realm basic auth and API keys, plain HTTP, on 9201/9301.

    Same artifacts, its own data, config and file-realm user (created in ``prepare``). API keys
    do not work in this distribution (see the module docstring). Not registered in
    ``services/__init__.py``; until it is, register it for one process::

        SERVICES["elasticsearch-secure"] = SecureElasticsearchService
        Stack(only=["elasticsearch-secure"]).up()   # .down() the same way

    Clients log in with ``basic_auth=(SECURE_USER, SECURE_PASSWORD)`` (also in ``info()``).
    """

    name = "elasticsearch-secure"
    ports = (9201, 9301)
    secure = True

    def info(self) -> dict[str, Any]:
        return {**super().info(), "user": SECURE_USER, "password": SECURE_PASSWORD}
