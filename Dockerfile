# The operator image: a wheel built in one stage, installed into a clean slim image in the next,
# so the final image carries no compilers, no build backend and no source tree.
# No `# syntax=` line: BuildKit's built-in frontend suffices, and a pinned one would be fetched
# from a registry at every build.

# The base: the official Python slim image by default. `make image` passes a local Debian-based
# stand-in where no image registry is reachable.
ARG BASE_IMAGE=python:3.11.13-slim-bookworm

FROM ${BASE_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Only what the build backend reads: metadata, the readme it embeds, and the package source.
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip wheel --no-deps --wheel-dir /wheels .


FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="webhook-operator" \
      org.opencontainers.image.description="Kubernetes operator that delivers signed, retried, observable webhooks" \
      org.opencontainers.image.source="https://github.com/webhook-operator/webhook-operator" \
      org.opencontainers.image.url="https://github.com/webhook-operator/webhook-operator" \
      org.opencontainers.image.documentation="https://github.com/webhook-operator/webhook-operator/blob/main/docs/install.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The wheel is bind-mounted from the builder, so it never becomes a layer of this image;
# its dependencies come from the package index as pure or manylinux wheels.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir /wheels/*.whl

# 65532 is the conventional "nonroot" id; numeric so that runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /tmp

# 8080: Prometheus /metrics; 8081: /healthz for the kubelet's probes.
EXPOSE 8080 8081

ENTRYPOINT ["webhook-operator", "run"]
