# One image for every forklane component:
#   control plane:  forklane controlplane serve --listen 0.0.0.0:8080 --grpc 0.0.0.0:18000
#   sidecar proxy:  forklane proxy run --controlplane forklane:18000 --service NAME --local-app 127.0.0.1:PORT
# (`python -m forklane.proxy run ...` starts the sidecar without loading the CLI framework.)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/forklane
COPY pyproject.toml setup.py constraints.txt README.md ./
COPY proxy ./proxy
COPY controlplane ./controlplane
COPY sdk ./sdk
RUN pip install --no-cache-dir -c constraints.txt ".[all]" \
    && useradd --system --uid 10001 --no-create-home forklane \
    && mkdir -p /var/lib/forklane && chown forklane /var/lib/forklane
USER 10001
ENV FORKLANE_DATA_DIR=/var/lib/forklane
EXPOSE 8080 18000 15000 15001 15006
ENTRYPOINT ["forklane"]
CMD ["--help"]
