# genesys-token-proxy: the sidecar (`serve`) and its injector (`inject`) in one small image.
#   docker build -t genesys-token-proxy:0.1.0 .     (what deploy/k8s/ runs)
# Build stage: install the package into a virtualenv with the README's `pip install .`.
FROM python:3.11-slim-bookworm AS build
# Where pip finds packages, for builds behind a mirror or a TLS-inspecting proxy; unset, PyPI:
#   docker build --build-arg PIP_INDEX_URL=https://mirror.example/simple -t ... .
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install .
# The daemon needs neither at run time (about 22 MB, and a package installer in production).
RUN pip uninstall --yes --quiet pip setuptools

# Final stage: the virtualenv only; no build tree, no pip, no compilers, a non-root user.
FROM python:3.11-slim-bookworm
# docker build --build-arg VERSION=... --build-arg REVISION=$(git rev-parse HEAD) --build-arg CREATED=...
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="genesys-token-proxy" \
      org.opencontainers.image.description="Sidecar that injects per-tenant Genesys Cloud OAuth tokens, with credentials from Vault" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
# A name Debian's base-passwd does not reserve (its `proxy` is uid 13 in every Debian image).
RUN groupadd --system --gid 10001 genesys-token-proxy \
    && useradd --system --uid 10001 --gid genesys-token-proxy --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin genesys-token-proxy
COPY --from=build /opt/venv /opt/venv
# No .pyc writes: the root filesystem is read-only in the pod. `serve` writes nothing; `demo`
# writes its credentials file to a temporary directory: `docker run --read-only --tmpfs /tmp`.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
# 8080: the app-facing proxy (loopback in a pod); 9090: admin, probes and metrics; 8443: injector.
EXPOSE 8080 9090 8443
ENTRYPOINT ["genesys-token-proxy"]
CMD ["serve"]
