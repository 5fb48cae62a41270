# Image for docker-compose.yml: the surgegate worker and CLI.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY surgegate surgegate
COPY schemas schemas
COPY streams streams
COPY agents agents
COPY api api
COPY edge edge
COPY gpu gpu
COPY devtools devtools
RUN pip install --no-cache-dir .
ENTRYPOINT ["surgegate"]
