"""Registry of the stack's servers, in a stable order."""

from __future__ import annotations

from cdcstream.stack.base import Service

SERVICES: dict[str, type[Service]] = {}


def _register() -> None:
    # Imported lazily so that a service module being developed cannot break the others.
    import importlib

    for mod, cls in [
        ("postgres", "PostgresService"),
        ("kafka", "KafkaService"),
        ("connect", "ConnectService"),
        ("elasticsearch", "ElasticsearchService"),
        # A second node with security on: the mirror's credentials path is tested against it.
        ("elasticsearch", "SecureElasticsearchService"),
        ("embeddings", "EmbeddingsService"),
        ("objectstore", "ObjectStoreService"),
        ("mariadb", "MariaDBService"),
        ("vault", "VaultService"),
    ]:
        try:
            m = importlib.import_module(f"cdcstream.stack.services.{mod}")
        except ModuleNotFoundError as e:
            if e.name == f"cdcstream.stack.services.{mod}":
                continue
            raise
        svc: type[Service] = getattr(m, cls)
        SERVICES[svc.name] = svc


_register()
