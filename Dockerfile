# The Python services (command, relay, query, migrate) share one image; compose.yaml picks the module.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first (pinned in pyproject.toml), so a code change does not reinstall them.
COPY pyproject.toml ./
RUN mkdir -p contracts engine command_service query_service db ops \
    && touch contracts/__init__.py engine/__init__.py command_service/__init__.py \
       query_service/__init__.py db/__init__.py ops/__init__.py \
    && pip install . && pip uninstall -y exchange

COPY contracts ./contracts
COPY engine ./engine
COPY command_service ./command_service
COPY query_service ./query_service
COPY db ./db
COPY relay ./relay
COPY ops ./ops
COPY config ./config
COPY docs/ERRORS.md ./docs/ERRORS.md
RUN pip install --no-deps . && useradd --system --uid 10001 exchange
USER exchange

ENV EXCHANGE_HOST=0.0.0.0 EXCHANGE_INSTRUMENTS_FILE=/app/config/instruments.json
EXPOSE 8001 8002 8003 8011
CMD ["python", "-m", "command_service"]
