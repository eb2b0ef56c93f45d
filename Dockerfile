# syntax=docker/dockerfile:1.7
#
# EdgeSAM service image. One Dockerfile, three targets chosen with --build-arg TARGET=...:
#
#   cpu     (default) any amd64/arm64 host; torch from PyTorch's CPU wheel index.
#   cuda    amd64 + NVIDIA GPU; torch from PyTorch's CUDA wheel index, TensorRT from NVIDIA's
#           Python packages on PyPI (`tensorrt` extra). The driver comes from the host
#           through the NVIDIA container toolkit.
#   jetson  arm64 Jetson; built FROM an L4T base that carries CUDA, cuDNN and TensorRT
#           (JetPack 6: l4t-jetpack r36.4 = CUDA 12.6 + TensorRT 10.3 + Python 3.10, the
#            default; JetPack 5: --build-arg L4T_BASE=nvcr.io/nvidia/l4t-jetpack:r35.4.1 =
#            CUDA 11.4 + TensorRT 8.5 + Python 3.8). torch is NVIDIA's Jetson wheel for that
#           JetPack, passed as --build-arg JETSON_TORCH_WHEEL=<url or path>; TensorRT's Python
#           bindings are the base's own (the venv sees the system site-packages). On Python
#           3.8 pyproject.toml's markers pick the 3.8 pins (NumPy 1.x, protobuf 5.29, grpc
#           1.70); deploy/jetson/check-py38.sh runs the tests with them on any machine.
#
# Weights are never baked in: mount them at /models (EDGESAM_CHECKPOINT). TensorRT engines
# are built on the device at first start into EDGESAM_ENGINE_CACHE_DIR (mount a volume).
# See docs/deployment.md.

ARG TARGET=cpu
ARG PYTHON_BASE=python:3.11.11-slim-bookworm
ARG L4T_BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0
ARG L4T_RUNTIME_BASE=${L4T_BASE}

# --------------------------------------------------------------------------------------------
# Build stages: each produces /opt/venv with the service installed and nothing else.
# edgesam-client (the gRPC stubs and the client, a dependency of the service) is installed
# from the checkout beside the service, never looked up on PyPI.
# --------------------------------------------------------------------------------------------
FROM ${PYTHON_BASE} AS build-python
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers only in the build stage, for any dependency without a wheel on this platform.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY deploy/docker/requirements.py deploy/docker/requirements.py

FROM build-python AS build-cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && python deploy/docker/requirements.py pyproject.toml --exclude torch \
       --exclude edgesam-client > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY engine ./engine
COPY service ./service
COPY clients/python ./clients/python
RUN pip install --no-deps ./clients/python .

FROM build-python AS build-cuda
ARG TORCH_VERSION=2.13.0
# The CUDA flavour of the torch wheel; the host driver must support it.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && python deploy/docker/requirements.py pyproject.toml --extra tensorrt --exclude torch \
       --exclude edgesam-client > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY engine ./engine
COPY service ./service
COPY clients/python ./clients/python
RUN pip install --no-deps ./clients/python .

FROM ${L4T_BASE} AS build-jetson
ARG JETSON_TORCH_WHEEL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       build-essential python3-dev python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/*
# --system-site-packages: TensorRT's Python bindings (python3-libnvinfer) live in the base.
# The venv starts with Ubuntu's pip (20.0.2 on JetPack 5), which knows no manylinux_2_28
# wheels (onnxruntime's for arm64 are only that) and resolves without backtracking: a pip
# that still runs on Python 3.8 replaces it.
RUN python3 -m venv --system-site-packages /opt/venv \
    && /opt/venv/bin/pip install "pip==24.3.1"
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY deploy/docker/requirements.py deploy/docker/requirements.py
# NVIDIA's Jetson torch wheels are built against NumPy 1.x (pyproject's Python 3.8 pins say
# so too; on JetPack 6's Python 3.10 only this constraint does).
ENV PIP_CONSTRAINT=/src/constraints.txt
# A wheel file is one exact version already: nothing more to pin.
# hadolint ignore=DL3013
RUN test -n "${JETSON_TORCH_WHEEL}" \
       || { echo "set --build-arg JETSON_TORCH_WHEEL=<NVIDIA torch wheel for this JetPack>" >&2; exit 1; } \
    && echo "numpy<2" > /src/constraints.txt \
    && pip install "${JETSON_TORCH_WHEEL}" \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
# TensorRT comes from the base (fails here, not at first start, if the base lacks it).
RUN python -c "import tensorrt; print('tensorrt', tensorrt.__version__)" \
    && pip install "tomli==2.2.1" \
    && python deploy/docker/requirements.py pyproject.toml --exclude torch --exclude tensorrt \
       --exclude edgesam-client > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY engine ./engine
COPY service ./service
COPY clients/python ./clients/python
RUN pip install --no-deps ./clients/python .

# --------------------------------------------------------------------------------------------
# Runtime stages: the base, the venv, a non-root user. No compilers, no weights.
# --------------------------------------------------------------------------------------------
FROM ${PYTHON_BASE} AS runtime-cpu
COPY --from=build-cpu /opt/venv /opt/venv

FROM ${PYTHON_BASE} AS runtime-cuda
COPY --from=build-cuda /opt/venv /opt/venv
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM ${L4T_RUNTIME_BASE} AS runtime-jetson
COPY --from=build-jetson /opt/venv /opt/venv
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility

# A stage of this file picked by TARGET, not an image: nothing to tag.
# hadolint ignore=DL3006
FROM runtime-${TARGET} AS final
ARG TARGET
ARG APP_UID=10001
LABEL org.opencontainers.image.title="edgesam-serve" \
      org.opencontainers.image.description="EdgeSAM segmentation service (HTTP + gRPC)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.edgesam.target="${TARGET}"
RUN groupadd --system --gid "${APP_UID}" edgesam \
    && useradd --system --uid "${APP_UID}" --gid edgesam --create-home \
       --home-dir /home/edgesam --shell /usr/sbin/nologin edgesam \
    && mkdir -p /models /var/cache/edgesam/engines /opt/edgesam/bin \
    && chown -R edgesam:edgesam /var/cache/edgesam
COPY --chown=root:root deploy/docker/healthcheck.py /opt/edgesam/healthcheck.py
COPY --chown=root:root bench /opt/edgesam/bench
COPY --chown=root:root --chmod=0755 deploy/jetson/build-engine.sh /opt/edgesam/bin/build-engine.sh
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    EDGESAM_TARGET=${TARGET} \
    EDGESAM_HTTP_PORT=8000 \
    EDGESAM_GRPC_PORT=50051 \
    EDGESAM_ROLE=all \
    EDGESAM_CHECKPOINT=/models/edge_sam_3x.pth \
    EDGESAM_ENGINE_CACHE_DIR=/var/cache/edgesam/engines \
    EDGESAM_DRAIN_SECONDS=20
WORKDIR /opt/edgesam
USER ${APP_UID}:${APP_UID}
EXPOSE 8000 50051
HEALTHCHECK --interval=15s --timeout=6s --start-period=10m --retries=3 \
    CMD ["python", "/opt/edgesam/healthcheck.py", "/readyz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
