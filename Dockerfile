# SAM's Serve app as an image: the page at /, POST /predict, /healthz.
#   docker build -t sam .                                   # CPU torch; no model inside
#   docker build -t sam --build-arg MODEL=models/latest .   # a model directory of the build context baked in
#   docker build -t sam-serve --build-arg SERVE_ONLY=1 .    # serving on ONNX Runtime only: no torch
#   docker run -p 8000:8000 sam                             # with a baked model; else -e MODEL_DIR=s3://... or models:/...
# CUDA: --build-arg TORCH_FROM="--index-url https://download.pytorch.org/whl/cu126" and run with --gpus all, NUM_GPUS=1.
# RUNTIME=torch|onnx|onnx-int8 at run time picks the runtime (default: onnx on a CPU); SERVE_ONLY images need a
# model directory that carries its onnx/ files, as every SAM export does.
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_FROM="--index-url https://download.pytorch.org/whl/cpu"
ARG SERVE_ONLY=
ENV VIRTUAL_ENV=/opt/sam PATH=/opt/sam/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PORT=8000 MODEL_DIR=/app/models/latest

RUN useradd --create-home --uid 1000 sam && python3 -m venv "$VIRTUAL_ENV"
WORKDIR /app
# Dependencies before the source, so a code change rebuilds only the layers below. Pinned torch first, from its
# own index: a bare requirement would pull a multi-GB CUDA build. SERVE_ONLY: the serving requirements alone.
# An empty README stands in for the real one (pyproject names it), so editing the README keeps this layer cached.
COPY pyproject.toml deploy/container/serve-requirements.txt ./
# hadolint ignore=SC2086,DL3013
RUN if [ -n "$SERVE_ONLY" ]; then pip install -r serve-requirements.txt; \
    else pip install $TORCH_FROM "torch==${TORCH_VERSION}" && mkdir sam && touch sam/__init__.py README.md && pip install . \
         && pip uninstall -y sam && rm -rf sam build ./*.egg-info README.md; fi
COPY sam ./sam
COPY serve_app.py serve_config.yaml README.md ./
COPY tune ./tune
COPY deploy/container/start.sh /usr/local/bin/sam-serve
# A serving image has nothing more to install: pip and setuptools go too.
RUN pip install --no-deps . && if [ -n "$SERVE_ONLY" ]; then pip uninstall -y pip setuptools; fi
ARG MODEL=deploy/container/no-model
COPY --chown=sam ${MODEL} /app/models/latest

USER 1000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['PORT'] + '/healthz', timeout=4)"]
CMD ["sam-serve"]
