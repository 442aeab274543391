# One image for every oaksend process: migrate, dispatcher, worker, health, sandbox.
# The base image is pinned to an exact release (bump it deliberately; add the digest,
# `python:3.12.8-slim-bookworm@sha256:...`, where your registry lets you look it up).
# Python 3.12: asyncio's running-loop lookup no longer costs a getpid() system call, which
# httpx's transport does several times per request. 3.11 stays the supported minimum (pyproject).
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

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
RUN pip install /dist/*.whl && rm -rf /dist \
    && useradd --system --uid 10001 --home-dir /home/oaksend --create-home oaksend
USER 10001:10001
WORKDIR /home/oaksend
ENTRYPOINT ["oaksend"]
CMD ["--help"]
