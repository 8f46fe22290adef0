# The application image: web (gunicorn), workers, beat, Flower and the one-shot migrate step all run
# from it with different commands (docker-compose.yml, ops/k8s/). Build: docker build -t checktick-governance .

# --- build: install the project and its dependencies into a virtualenv --------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md celery_app.py flowerauth.py ./
COPY checktick_app ./checktick_app
RUN /opt/venv/bin/pip install .

# --- runtime: the virtualenv, the entry scripts, a non-root user ----------------------------------
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CHECKTICK_VAR_DIR=/app/var
RUN groupadd --system --gid 10001 checktick \
    && useradd --system --uid 10001 --gid checktick --home-dir /app --shell /usr/sbin/nologin checktick
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# manage.py and flowerconfig.py are run from here (Flower reads ./flowerconfig.py, which refuses to
# start without authentication); ops/postgres/ holds the grants the migrate step applies.
COPY manage.py flowerconfig.py ./
COPY ops/postgres ./ops/postgres
RUN mkdir -p /app/var && chown checktick:checktick /app/var
USER checktick:checktick
EXPOSE 8000 5555
# PORT and WEB_CONCURRENCY (gunicorn reads it) come from the environment, as on most platforms.
CMD ["sh", "-c", "exec gunicorn checktick_app.wsgi --bind 0.0.0.0:${PORT:-8000} --access-logfile - --graceful-timeout 30"]
