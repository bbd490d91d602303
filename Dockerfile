# inferd image: `docker build -t inferd .` then, for example,
#   docker run -p 8000:8000 -e INFERD_API_KEYS='sk-1:acme:predict,jobs,models' inferd serve
#   docker run -e INFERD_STORE=postgresql://... inferd worker --metrics-port 9100 --metrics-host 0.0.0.0
# The example models are baked into /models; mount your own repository over it.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- build: a virtual environment with inferd and its runtimes, nothing else ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/inferd
COPY pyproject.toml README.md ./
COPY src ./src
# Extras: scikit-learn, ONNX Runtime and OpenTelemetry by default; --build-arg EXTRAS=sklearn for a smaller image.
ARG EXTRAS=all,otel
RUN /opt/inferd/bin/pip install --no-compile "/src[${EXTRAS}]"

# --- runtime: the virtual environment, the example models, a non-root user ------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/inferd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INFERD_MODELS=/models \
    INFERD_HOST=0.0.0.0 \
    INFERD_STORE=sqlite:////var/lib/inferd/inferd.db \
    INFERD_HEALTHCHECK_URL=http://127.0.0.1:8000/livez
RUN groupadd --system --gid 10001 inferd \
    && useradd --system --uid 10001 --gid inferd --home-dir /var/lib/inferd --create-home inferd
COPY --from=build /opt/inferd /opt/inferd
COPY --chown=10001:10001 examples/models /models
WORKDIR /var/lib/inferd
# /models: the model repository; /var/lib/inferd: the SQLite job store of a single-machine setup.
VOLUME ["/models", "/var/lib/inferd"]
USER 10001:10001
# 8000: HTTP; 8001: V2 gRPC (serve); 9100: a worker's metrics and probes (--metrics-port 9100).
EXPOSE 8000 8001 9100
# A worker answers on its metrics port: set INFERD_HEALTHCHECK_URL=http://127.0.0.1:9100/livez there.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen(os.environ['INFERD_HEALTHCHECK_URL'], timeout=2).status != 200)"]
# `docker stop` sends SIGTERM: inferd drains (running jobs get shutdown_grace_s, default 20 s), so give
# it `docker stop -t 40` or compose's stop_grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["inferd"]
CMD ["serve"]
