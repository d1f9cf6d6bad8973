# One image for every forklane component (numeric non-root UID 1337, the UID traffic capture
# exempts):
#   control plane:   forklane controlplane serve            (the chart runs this)
#   sidecar proxy:   python -P -m forklane.proxy run ...    (injected; skips the CLI framework)
#   capture init:    forklane proxy capture ...             (injected; runs as root, NET_ADMIN)
#
# Build stage: a C compiler, then a virtual environment with forklane and its pinned
# dependencies, the proxy's hot path compiled by Cython (pinned by the constraints file, which
# PIP_CONSTRAINT also applies to the isolated build environment); the build fails unless the
# compiled hot path is what got installed. Final stage: the same slim base, the virtual
# environment, iptables for the capture init, nothing else (no compiler, no pip cache, no
# build files).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_CONSTRAINT=/src/constraints.txt
WORKDIR /src
COPY pyproject.toml setup.py constraints.txt README.md ./
COPY proxy ./proxy
COPY controlplane ./controlplane
COPY sdk ./sdk
RUN python -m venv /opt/forklane \
    && /opt/forklane/bin/pip install -c constraints.txt ".[all]" \
    && /opt/forklane/bin/python -c "from forklane.proxy import hotpath; m = hotpath.mode(); \
print('hot path:', m); raise SystemExit(0 if m == 'compiled' else 'the hot path did not compile')" \
    && /opt/forklane/bin/python -m compileall -q /opt/forklane/lib

FROM ${PYTHON_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 1337 forklane \
    && useradd --system --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin forklane \
    && mkdir -p /var/lib/forklane && chown 1337:1337 /var/lib/forklane
COPY --from=build /opt/forklane /opt/forklane
ENV PATH=/opt/forklane/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    FORKLANE_DATA_DIR=/var/lib/forklane
WORKDIR /var/lib/forklane
USER 1337:1337
EXPOSE 8080 18000 9443 15000 15001 15006
ENTRYPOINT ["forklane"]
CMD ["--help"]
