# syntax=docker/dockerfile:1
# llm-gateway: the OpenAI-compatible proxy (`llm-gateway serve`) in a small image.
#   docker build -t llm-gateway .
#   docker run -p 4000:4000 -v ./config.yaml:/etc/llm-gateway/config.yaml:ro \
#     -e GATEWAY_CONFIG=/etc/llm-gateway/config.yaml -e OPENAI_API_KEY llm-gateway
# See docs/deploy.md (compose with PostgreSQL, Redis and two replicas; Kubernetes).
ARG PYTHON_VERSION=3.11

# -- build: the project and every dependency as wheels -----------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
# Only what the wheel is made of, so a change to tests or docs does not rebuild it.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY providers ./providers
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- runtime: a venv with those wheels and nothing else (no compiler, no dev extras) -----
FROM python:${PYTHON_VERSION}-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# The wheels are mounted for the install only, so they take no layer of the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/wheels llm-gateway \
    && /opt/venv/bin/pip uninstall --yes pip \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/llm-gateway \
        --shell /usr/sbin/nologin gateway \
    && install -d -o gateway -g gateway /var/lib/llm-gateway \
    && mkdir /etc/llm-gateway
# Numeric, so Kubernetes' runAsNonRoot can verify it. The working directory is the one place
# the process may write: the default SQLite ledger (./llm-gateway.db) when no database is set.
USER 10001:10001
WORKDIR /var/lib/llm-gateway
EXPOSE 4000
# slim has no curl: ask /health/live with the Python that is there anyway.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4000/health/live', timeout=2)"]
# Inside a container the gateway must listen on every interface, on the port it EXPOSEs.
# The config comes from $GATEWAY_CONFIG (a mounted file; secrets in it as ${VAR} from the
# environment); without one the built-in mock models are served. Arguments given to
# `docker run` are appended, e.g. `--workers 2` or `--config /path.yaml`.
ENTRYPOINT ["llm-gateway", "serve", "--host", "0.0.0.0", "--port", "4000"]
