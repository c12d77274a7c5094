# The base images of the Kubeflow steps: the upstream image of a flavour plus homefeed's dependencies.
# `kfp component build components/ --no-build-image` (python -m components.steps.images) generates
# components/Dockerfile (CPU) and components/Dockerfile.gpu FROM these and copies components/ into
# /usr/local/src/kfp/components; PYTHONPATH below makes that copy the `components` package.
#
# The image names live in components/steps/images.py only; `python -m components.steps.images commands`
# prints the four docker build commands (base CPU/GPU with --build-arg UPSTREAM=..., then the step images).
ARG UPSTREAM
FROM ${UPSTREAM}
ARG FLAVOUR=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PYTHONPATH=/usr/local/src/kfp
# The CUDA images ship no Python 3.11: install it and put a venv first on PATH.
RUN if ! command -v python3.11 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates && \
      rm -rf /var/lib/apt/lists/*; fi && \
    python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/homefeed
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
# CPU: torch's CPU wheels; GPU: the CUDA wheels (CUDA runtime bundled) and TensorRT for the ONNX -> plan export.
RUN if [ "$FLAVOUR" = "gpu" ]; then pip install . tensorrt-cu12; \
    else pip install --extra-index-url https://download.pytorch.org/whl/cpu .; fi && \
    pip check
# Non-root from here on; KFP's generated Dockerfile pip-installs into the venv and copies the step code
# into /usr/local/src/kfp as this user.
RUN useradd --uid 1000 --create-home homefeed && mkdir -p /usr/local/src/kfp && \
    chown -R 1000:1000 /opt/venv /usr/local/src/kfp
USER 1000
