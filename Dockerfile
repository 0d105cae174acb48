# One image for every role: the command picks it.
#   docker run IMAGE serve --host 0.0.0.0 --port 8000 --workers 2   (the API; the default)
#   docker run IMAGE worker --processes 2                             (workers)
#   docker run IMAGE db upgrade                                       (migrations)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 eventpipe
WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
COPY api/ api/
COPY worker/ worker/
COPY shared/ shared/
COPY ops/ ops/
COPY cli/ cli/
RUN pip install .

USER eventpipe
EXPOSE 8000
ENTRYPOINT ["eventpipe"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
