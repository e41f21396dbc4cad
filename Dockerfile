# qsmbids: BIDS App for Quantitative Susceptibility Mapping.
#
#   docker build -t qsmbids .                                   # CUDA build of torch (GPU hosts; runs on CPU too)
#   docker build --build-arg TORCH_VARIANT=cpu -t qsmbids:cpu .  # CPU build of torch (about 2 GB smaller)
#   docker run --rm --read-only --tmpfs /tmp -u "$(id -u):$(id -g)" \
#       -v /path/bids:/data:ro -v /path/out:/out -v /path/work:/work qsmbids /data /out participant -w /work
#
# Every external base image is an ARG so sites without Docker Hub can swap it (a mirror, a local image). The image
# carries everything the app needs at run time: the package with its shipped network weights, atlas and validator;
# nothing is downloaded when it runs.

ARG BASE_IMAGE=python:3.11-slim-bookworm
# cuda: PyPI's default Linux build of torch (bundles the CUDA runtime; needs an NVIDIA driver on the host for GPU)
# cpu:  the CPU-only build from TORCH_CPU_INDEX (empty: the index/find-links pip is configured with)
ARG TORCH_VARIANT=cuda

# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build

ARG TORCH_VARIANT
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# torch first, in its own layer: the largest and the least often changed
RUN case "${TORCH_VARIANT}" in \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      cpu) if [ -n "${TORCH_CPU_INDEX}" ]; then \
             pip install --index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}"; \
           else \
             pip install "torch==${TORCH_VERSION}"; \
           fi ;; \
      *) echo "TORCH_VARIANT must be 'cuda' or 'cpu', not '${TORCH_VARIANT}'" >&2; exit 64 ;; \
    esac

COPY pyproject.toml README.md LICENSE CHANGES.md /src/
COPY qsmbids /src/qsmbids
RUN pip install /src \
    && qsmbids --version \
    && python -c "from qsmbids.config import DEEP_MODELS as m; from qsmbids.deep.weights import load_model as f; [f(n) for n in m]"

# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ARG VERSION=0.1.0.dev0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG IMAGE_TAG=qsmbids/qsmbids:${VERSION}
ARG TORCH_VARIANT

LABEL org.opencontainers.image.title="qsmbids" \
      org.opencontainers.image.description="BIDS App for Quantitative Susceptibility Mapping (QSM) from multi-echo GRE" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.source="https://github.com/qsmbids/qsmbids" \
      org.opencontainers.image.documentation="https://github.com/qsmbids/qsmbids#readme" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.qsmbids.torch-variant="${TORCH_VARIANT}"

COPY --from=build /opt/venv /opt/venv

# Runs as any user (-u UID:GID) and under --read-only: HOME is /tmp (a tmpfs), so the caches of matplotlib, torch
# and deno go to /tmp/.config and /tmp/.cache; the default work folder is /tmp/work (WORKDIR); nothing in the image
# is written at run time. Apptainer/Singularity replace HOME with the user's own, where the same caches then live.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    MPLBACKEND=Agg \
    DENO_NO_UPDATE_CHECK=1 \
    NIPYPE_NO_ET=1 \
    NO_ET=1 \
    PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    QSMBIDS_CONTAINER_TYPE=docker \
    QSMBIDS_CONTAINER_TAG=${IMAGE_TAG}

WORKDIR /tmp
ENTRYPOINT ["qsmbids"]
CMD ["--help"]
