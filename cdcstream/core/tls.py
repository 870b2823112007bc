"""HTTPS for the worker's pages and API: the server's ``ssl.SSLContext`` from settings.

``web_tls_cert`` is a PEM file (the server certificate, then any intermediates);
``web_tls_key`` its unencrypted private key, as a path or a secret reference. A key held in
Vault or an environment variable is written to a private temporary file only for the
moment OpenSSL reads it (Python's ``ssl`` loads keys from files only), then removed.

Everything here is blocking file I/O: it runs at worker start, before the event loop.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cdcstream.core.resolver import Resolver
from cdcstream.core.secrets import SecretError, SecretRef
from cdcstream.core.settings import Settings


class TLSConfigError(ValueError):
    """The certificate or key cannot be used; the message names the file (never key material)."""


@contextlib.contextmanager
def _key_file(ref: SecretRef, resolver: Resolver) -> Iterator[str]:
    if ref.scheme == "file":
        yield ref.path
        return
    try:
        pem = resolver.resolve(ref).get_secret_value()
    except SecretError as e:
        raise TLSConfigError(f"web_tls_key {ref}: {e}") from None
    with tempfile.TemporaryDirectory(prefix="cdcstream-tls-") as d:  # 0700
        path = os.path.join(d, "key.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pem if pem.endswith("\n") else pem + "\n")
        yield path


def server_ssl_context(settings: Settings, resolver: Resolver | None = None) -> ssl.SSLContext | None:
    """The context the worker's web server serves HTTPS with; None without ``web_tls_cert``."""
    cert, ref = settings.web_tls_cert, settings.web_tls_key
    if cert is None:
        return None
    assert isinstance(ref, SecretRef)  # Settings requires the pair
    for what, path in (("web_tls_cert", cert), ("web_tls_key", Path(ref.path) if ref.scheme == "file" else None)):
        if path is not None and not path.is_file():
            raise TLSConfigError(f"{what} {path}: no such file (CDCSTREAM_{what.upper()})")
        if path is not None and not os.access(path, os.R_OK):
            raise TLSConfigError(f"{what} {path}: not readable by this process (uid {os.getuid()})")
    try:
        # Checked apart first, so that the error says which of the two files is wrong.
        ssl.create_default_context().load_verify_locations(cafile=str(cert))
    except ssl.SSLError as e:
        raise TLSConfigError(f"web_tls_cert {cert}: no PEM certificate in it ({e.reason or e})") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    def encrypted() -> str:
        # Without a callback OpenSSL would prompt on the terminal and block the start.
        raise TLSConfigError(f"web_tls_key {ref}: the key is encrypted; give it unencrypted (0600, or in Vault)")

    with _key_file(ref, resolver or Resolver()) as key:
        try:
            ctx.load_cert_chain(str(cert), key, password=encrypted)
        except ssl.SSLError as e:
            raise TLSConfigError(f"web_tls_key {ref}: not an unencrypted PEM private key matching web_tls_cert "
                                 f"{cert} ({e.reason or e})") from None
    return ctx
