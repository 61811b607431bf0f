# firstword: real-time streaming TTS server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FIRSTWORD_CACHE_DIR=/app/models/cache

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY engine/ engine/
COPY protocol/ protocol/
COPY service/ service/
COPY web/ web/
COPY server.py .

# Split and verify the default voice once at build time, so a container start
# finds the split graphs in the cache and only opens and warms the sessions.
RUN python -c "from engine import Engine; Engine.load()"

RUN useradd --system --uid 10001 firstword && chown -R firstword /app/models
# Numeric, so Kubernetes' runAsNonRoot can verify it (deploy/k8s/deployment.yaml).
USER 10001

EXPOSE 8765
# For plain Docker; Kubernetes ignores it and uses the probes in deploy/k8s.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8765/readyz', timeout=2).status == 200 else 1)"]
CMD ["python", "server.py", "--host", "0.0.0.0", "--port", "8765"]
