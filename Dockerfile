# The operator image: `mlinfra run` (Kopf, standalone). Multi-stage: the builder installs the package and its
# runtime dependencies, pinned by requirements.lock, into a venv; the final stage copies only that venv.
# Runs as the non-root user 10001 on a read-only root filesystem (HOME and scratch space live in /tmp, an
# emptyDir in the Helm chart).
#
#   docker build -t ghcr.io/mlinfra/mlinfra-operator:0.1.0 .
#
# The base image is pinned by tag; pin it by digest too (python:3.11.17-slim-bookworm@sha256:...) where the
# build has registry access to resolve it. BASE_IMAGE exists for builds without a registry (the local platform
# builds this file on its own Debian python image, see docs/images.md); leave it alone otherwise.

ARG BASE_IMAGE=python:3.11.17-slim-bookworm

FROM ${BASE_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY operator/ operator/

# requirements.lock also pins the test tools (pytest, ruff, mypy, hadolint): used as constraints it pins every
# runtime dependency of the package to the locked version without installing the test tools.
RUN pip install --no-cache-dir --constraint requirements.lock .


FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown

LABEL org.opencontainers.image.title="mlinfra-operator" \
      org.opencontainers.image.description="Kubernetes operator (Kopf) for the data infrastructure of ML platforms: DataStore, FeatureView, ModelRegistry and VectorIndex." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.17-slim-bookworm"

# pg_basebackup and pg_receivewal, for PostgreSQL backups and WAL archiving (mlinfra.backup.postgres): the
# client of the base image's Debian release, which backs up servers of its major version and older. Its minor
# version follows Debian's security updates, so it is not pinned. The local platform's base image has it already
# (e2e/images/python.packages): then nothing is installed here.
# hadolint ignore=DL3008
RUN if ! command -v pg_basebackup >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends postgresql-client-15 \
        && rm -rf /var/lib/apt/lists/*; \
    fi

RUN groupadd --system --gid 10001 mlinfra \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin mlinfra

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

WORKDIR /tmp
USER 10001:10001

# 8080: /healthz (liveness), 9090: /metrics (Prometheus).
EXPOSE 8080 9090

ENTRYPOINT ["mlinfra"]
CMD ["run"]
