# Image for docker-compose.yml: the surgegate worker and CLI, installed from the lock the tests passed with.
FROM python:3.11-slim
WORKDIR /app
# the whole tree (.dockerignore leaves out environments, caches and the repository), so no package is forgotten
COPY . .
RUN pip install --no-cache-dir -c requirements.lock .
ENTRYPOINT ["surgegate"]
