# syntax=docker/dockerfile:1
# imapmoveproxy container image: see docs/deployment.md.
#
#   docker build -t imapmoveproxy .
#   docker run -v "$PWD/config.toml:/etc/imapmoveproxy/config.toml:ro" -p 143:143 imapmoveproxy
#
# Build arguments:
#   BASE_IMAGE           an image with Python 3.11+ and its venv module, the same for both stages
#                        (default python:3.11-slim; the tests use a debootstrapped Debian 12)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST
#                        passed to pip as they are, to build behind a package mirror
#   PIP_CERT             CA bundle for pip, a path inside the build; or give the bundle as the
#                        build secret "pip_cert" (docker build --secret id=pip_cert,src=FILE),
#                        which is used when PIP_CERT is not set
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY imapmoveproxy ./imapmoveproxy
# A venv holding only the proxy and its dependencies; pip and setuptools are removed afterwards.
RUN --mount=type=secret,id=pip_cert \
    if [ -z "${PIP_CERT:-}" ] && [ -s /run/secrets/pip_cert ]; then \
        export PIP_CERT=/run/secrets/pip_cert; \
    fi \
    && python3 -m venv /opt/imapmoveproxy \
    && /opt/imapmoveproxy/bin/pip install --no-cache-dir /src \
    && /opt/imapmoveproxy/bin/python -m pip uninstall --yes pip setuptools \
    && /opt/imapmoveproxy/bin/imapmoveproxy --help > /dev/null

FROM ${BASE_IMAGE}
ARG PROXY_UID=10143
# A fixed numeric user (Kubernetes' runAsNonRoot can only check a numeric USER).
RUN groupadd --system --gid "${PROXY_UID}" imapmoveproxy \
    && useradd --system --no-log-init --uid "${PROXY_UID}" --gid "${PROXY_UID}" \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin imapmoveproxy \
    && mkdir -p /etc/imapmoveproxy /var/lib/imapmoveproxy \
    && chown "${PROXY_UID}:${PROXY_UID}" /var/lib/imapmoveproxy
COPY --from=build /opt/imapmoveproxy /opt/imapmoveproxy
COPY deploy/healthcheck.py /usr/local/libexec/imapmoveproxy-healthcheck
COPY config.example.toml /usr/share/doc/imapmoveproxy/config.example.toml
ENV PATH=/opt/imapmoveproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER ${PROXY_UID}:${PROXY_UID}
# 143: IMAP (STARTTLS with a certificate), 993: IMAPS (listen_tls), 9143: metrics and probes
# (metrics = "0.0.0.0:9143" in the config).
EXPOSE 143 993 9143
# The proxy drains on SIGTERM: MOVEs in flight finish, every client gets BYE, exit 0 within
# drain_timeout (30 s by default). Give `docker stop` more than that: docker stop -t 40.
STOPSIGNAL SIGTERM
# The proxy answers with its greeting (* OK, or * BYE when the upstream is down); works with any
# config. With `metrics` configured, http://127.0.0.1:9143/healthz can be given instead.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["/opt/imapmoveproxy/bin/python", "/usr/local/libexec/imapmoveproxy-healthcheck", \
         "127.0.0.1:143"]
# The MOVE journal's SQLite file (journal = "auto" without move_lock): mount a volume here so
# that a MOVE cut short by the container's death is finished after its restart. With move_lock
# the journal lives in Redis/Valkey instead (README "The MOVE journal").
VOLUME ["/var/lib/imapmoveproxy"]
# Exec form, no shell: the proxy itself is PID 1 and receives SIGTERM.
ENTRYPOINT ["/opt/imapmoveproxy/bin/imapmoveproxy"]
# The listen flag overrides `listen` in the file; the upstream (and the rest) come from the
# mounted TOML file (keys: /usr/share/doc/imapmoveproxy/config.example.toml).
CMD ["--config", "/etc/imapmoveproxy/config.toml", "--listen", "0.0.0.0:143"]
