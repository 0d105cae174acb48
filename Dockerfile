# One image for every role: the command picks it.
#   docker run IMAGE serve --host 0.0.0.0 --port 8000 --workers 2   (the API; the default)
#   docker run --no-healthcheck IMAGE worker --processes 2           (workers)
#   docker run --no-healthcheck IMAGE db upgrade                     (migrations)
# Installed as CI installs and tests it (.ci/run): the locked dependencies, then eventpipe's
# wheel, non-editable, run as a user that owns none of it.

# The wheel, built with the locked build backend.
FROM python:3.11-slim AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY requirements-build.txt ./
RUN pip install --require-hashes --no-deps -r requirements-build.txt
COPY pyproject.toml README.md ./
COPY api/ api/
COPY worker/ worker/
COPY shared/ shared/
COPY ops/ ops/
COPY cli/ cli/
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN useradd --create-home --uid 10001 --user-group eventpipe

# The locked dependencies first, in a layer of their own: a code change does not reinstall
# them (--no-deps: the lock names every package; pip resolves nothing).
COPY requirements.txt /tmp/requirements.txt
RUN pip install --require-hashes --no-deps -r /tmp/requirements.txt && rm /tmp/requirements.txt

# Then the code: eventpipe's wheel, migrations included (no source tree in the image).
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/eventpipe-*.whl && rm -rf /tmp/dist

USER 10001:10001
WORKDIR /home/eventpipe
EXPOSE 8000
# Liveness: /healthz answers while the process serves, whatever Redis or PostgreSQL do, so a
# Redis blip does not get healthy API containers restarted (readiness is /readyz, which
# compose gates on). With the image's Python: a slim image has no curl.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["eventpipe"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
