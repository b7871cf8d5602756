# clawgate container image.
#
# Two stages on the same pinned base: the builder installs the project into a
# virtual environment at /opt/venv, the runtime stage copies only that venv.
# Every dependency ships a manylinux wheel for CPython 3.11, so neither stage
# needs a compiler; the runtime stage installs no packages at all.
#
# Runtime contract (see docs/deploy.md):
#   /etc/clawgate/config.yaml   configuration, mounted read-only
#   /etc/clawgate/tls/          certificate and key, mounted read-only
#   /run/secrets/*              secrets, named by the CLAWGATE_*_FILE variables
#   8443/tcp, 8080/tcp          HTTPS and the HTTP->HTTPS redirect; high ports so
#                               a non-root process with no capabilities can bind them
#   127.0.0.1:28080             health listener (/healthz, /readyz), container-local

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the wheel is built from: a change elsewhere in the tree must not
# invalidate this layer, and nothing else (tests, secrets) belongs in an image.
COPY pyproject.toml README* ./
COPY policy/ policy/
COPY proxy/ proxy/
# --only-binary keeps a missing wheel from silently compiling C code here.
RUN pip install --no-cache-dir --only-binary=:all: --no-binary=clawgate . \
    && clawgate --help > /dev/null


FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="clawgate" \
      org.opencontainers.image.description="Identity-aware reverse proxy for the OpenClaw gateway" \
      org.opencontainers.image.licenses="Apache-2.0"

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only at run time and the
# venv was byte-compiled at install time, so there is nothing to write.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    CLAWGATE_CONFIG=/etc/clawgate/config.yaml \
    CLAWGATE_DATA_DIR=/data

# A fixed uid/gid so secret and key files on the host can be chowned to it. /data holds
# what must survive a restart (SSH host keys, the ACME account and certificates): the
# one place to mount a writable volume.
RUN groupadd --system --gid 10001 clawgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin clawgate \
    && mkdir -m 0700 /data && chown 10001:10001 /data

COPY --from=builder /opt/venv /opt/venv

WORKDIR /etc/clawgate
USER 10001:10001

EXPOSE 8443 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["clawgate", "probe", "--insecure", "--url", "https://127.0.0.1:8443/ping", "--url", "http://127.0.0.1:28080/healthz"]

ENTRYPOINT ["clawgate"]
CMD ["serve", "--config", "/etc/clawgate/config.yaml"]
