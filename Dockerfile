# The cdcstream worker. Untested here (no Docker engine where the project is developed);
# tests/unit/test_docker_files.py checks it agrees with the native stack.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    CDCSTREAM_WEB_HOST=0.0.0.0 CDCSTREAM_WEB_PORT=6066 CDCSTREAM_DATA_DIR=/var/lib/cdcstream

RUN useradd --system --create-home --uid 10001 cdcstream \
    && mkdir -p /var/lib/cdcstream && chown cdcstream /var/lib/cdcstream

WORKDIR /app
COPY pyproject.toml README.md ./
COPY cdcstream ./cdcstream
COPY agents ./agents
COPY tables ./tables
RUN pip install --no-cache-dir .

USER cdcstream
EXPOSE 6066
# /healthz is the one endpoint without a token (liveness, no data): the worker binds 0.0.0.0
# here, so it refuses to start without CDCSTREAM_API_TOKEN / CDCSTREAM_API_READ_TOKEN
# (docs/operations.md, "Running it exposed").
# With CDCSTREAM_WEB_TLS_CERT set the worker speaks HTTPS only; the check goes to loopback, where
# the certificate's name need not match (liveness only: no token, no data).
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import os,ssl,sys,urllib.request as u; tls=bool(os.environ.get('CDCSTREAM_WEB_TLS_CERT')); sys.exit(0 if u.urlopen(('https' if tls else 'http') + '://127.0.0.1:6066/healthz', timeout=2, context=ssl._create_unverified_context() if tls else None).status == 200 else 1)"
ENTRYPOINT ["cdcstream"]
CMD ["worker"]
