# One image for every Bulkhead service; docker-compose.yml picks each
# service's command. Build: docker build -t bulkhead:local .

# --- build: generate the protobuf modules and build the wheel ---------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .

# The code generators at the versions pinned in pyproject.toml's dev extra,
# then what `make protos` does: buf lint and scripts/gen_protos.py.
RUN python -c "import tomllib; \
dev = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['dev']; \
print('\n'.join(r for r in dev if r.startswith(('buf-bin==', 'grpcio-tools==', 'mypy-protobuf=='))))" \
    > /tmp/codegen-requirements.txt
RUN pip install -r /tmp/codegen-requirements.txt \
    && buf lint \
    && python scripts/gen_protos.py \
    && pip wheel --no-deps --wheel-dir /wheels .

# --- runtime ----------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BULKHEAD_LOG_FORMAT=json

# The wheel's dependencies are pinned with == in pyproject.toml.
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin bulkhead

# The installed package cannot find config/ on its own: the default path of
# the models file is relative to the source tree, not to site-packages.
WORKDIR /app
COPY config ./config
ENV BULKHEAD_MODELS_FILE=/app/config/models.toml

USER bulkhead
EXPOSE 8000 50051 50061 50071
CMD ["python", "-m", "gateway"]
