# One image for every oaksend process: migrate, dispatcher, worker, health, sandbox.
# The base image is pinned by digest (bump the tag and its digest together, deliberately).
# Python 3.12: asyncio's running-loop lookup no longer costs a getpid() system call, which
# httpx's transport does several times per request. 3.11 stays the supported minimum (pyproject).
# Dependencies come from requirements.lock (`make lock`: every version pinned, every file hashed),
# so a rebuild installs exactly what was tested; the wheel itself is installed without them.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm@sha256:2199a62885a12290dc9c5be3ca0681d367576ab7bf037da120e564723292a2f0

# -- build the wheel ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY oaksend ./oaksend
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
COPY sandbox ./sandbox
RUN pip wheel --no-deps --wheel-dir /dist .

# -- run it as a non-root user, from the installed wheel only ------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /dist /dist
COPY requirements.lock /tmp/requirements.lock
RUN pip install --require-hashes --no-deps -r /tmp/requirements.lock \
    && pip install --no-deps /dist/*.whl && rm -rf /dist /tmp/requirements.lock \
    && useradd --system --uid 10001 --home-dir /home/oaksend --create-home oaksend
USER 10001:10001
WORKDIR /home/oaksend
ENTRYPOINT ["oaksend"]
CMD ["--help"]
