# The review app on a CPU. For a GPU image, start from an NVIDIA CUDA runtime image and install the CUDA build of
# torch 2.13.0 instead (see README, "GPU machines").
FROM python:3.11-slim

COPY apt-packages.txt /tmp/apt-packages.txt
RUN apt-get update \
 && apt-get install -y --no-install-recommends $(grep -v '^chromium$' /tmp/apt-packages.txt) \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
# The CPU wheel of torch; PyPI's default Linux wheel would pull several GB of CUDA libraries.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt \
 && python -c "import imagecodecs, tifffile; imagecodecs.lzw_decode; imagecodecs.png_decode"
# .dockerignore keeps local databases (patient pseudonyms), image stores, keys and environments out of the image.
COPY . .

ENV LEUKO_DB_PATH=/data/leuko.duckdb \
    LEUKO_MODEL_DIR=/data/models \
    LITELLM_LOCAL_MODEL_COST_MAP=True
# The database, its image store and any models trained in the app live on the volume.
VOLUME ["/data"]
EXPOSE 8501
CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]
