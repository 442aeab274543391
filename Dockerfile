# One image for every oaksend process: migrate, dispatcher, worker, sandbox.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
COPY sandbox ./sandbox
RUN pip install . && useradd --system --uid 10001 oaksend
USER oaksend
ENTRYPOINT ["oaksend"]
CMD ["--help"]
