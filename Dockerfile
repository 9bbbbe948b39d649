# One image for every Meterway process: proxy, worker, dashboard, migrate, CLI.
#   docker build -t meterway .
#   docker run --rm meterway meterway --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# dependencies first (a layer that survives code changes), then the code
COPY pyproject.toml README.md ./
RUN mkdir -p meterway shared proxy worker dashboard simulator \
    && touch meterway/__init__.py shared/__init__.py proxy/__init__.py worker/__init__.py \
       dashboard/__init__.py simulator/__init__.py \
    && pip install -e . \
    && rm -rf meterway shared proxy worker dashboard simulator
COPY . .
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin meterway \
    && python -m compileall -q meterway shared proxy worker dashboard

USER meterway
EXPOSE 8000 8001
# the proxy's readiness; compose.yaml gives the other services their own checks
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
CMD ["meterway", "serve", "--host", "0.0.0.0", "--port", "8000"]
