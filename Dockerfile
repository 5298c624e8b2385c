# The review app on a CPU, runtime dependencies only (no test tools, no Chromium).
#
# The base image is pinned to a Python patch release on Debian 12 (bookworm), the platform the README and CI use.
# To pin it by content as well, resolve the tag once where a registry is reachable and append the digest:
#   docker pull python:3.11.7-slim-bookworm && docker inspect --format '{{index .RepoDigests 0}}' python:3.11.7-slim-bookworm
# For a GPU image, start from an NVIDIA CUDA runtime image and install the CUDA build of torch 2.13.0 instead
# (README, "GPU machines").
#
# The app speaks plain HTTP: run it behind a TLS-terminating reverse proxy (README, "Serving over TLS").
FROM python:3.11.7-slim-bookworm

# WeasyPrint's Pango and a font: the runtime part of apt-packages.txt (poppler-utils and chromium are for tests).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
# The hash-locked runtime set. torch is pinned to its CPU build (2.13.0+cpu), published on PyTorch's CPU index;
# PyPI's default Linux wheel would pull several GB of CUDA libraries.
RUN pip install --no-cache-dir --require-hashes --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements.txt \
 && python -c "import imagecodecs, tifffile; imagecodecs.lzw_decode; imagecodecs.png_decode"

# .dockerignore keeps tests, local databases (patient pseudonyms), image stores, keys and environments out.
COPY . .

# An unprivileged account owns only the data volume; the code stays root-owned and read-only to it.
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin leuko \
 && mkdir -p /data \
 && chown leuko:leuko /data
USER leuko

ENV LEUKO_DB_PATH=/data/leuko.duckdb \
    LEUKO_MODEL_DIR=/data/models \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    PYTHONDONTWRITEBYTECODE=1
# The database, its image store and any models trained in the app live on the volume.
VOLUME ["/data"]
EXPOSE 8501
# Streamlit answers "ok" on /_stcore/health once the server is up (the slim image has no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4); sys.exit(0 if r.status == 200 else 1)"]
CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]
