# syntax=docker/dockerfile:1
#
# dsm5lab in a container: CPU by default, CUDA with --build-arg CUDA=1.
#
# Build (from the repository root):
#   docker build -t dsm5lab .                              # CPU torch from the PyTorch CPU index
#   docker build --build-arg CUDA=1 -t dsm5lab:cuda .      # CUDA torch wheel (run with --gpus all)
#
# Run the pipeline on a checkout. Mount the whole project at /work (the working
# directory): DVC needs .git, .dvc, dvc.yaml, params.yaml and data/ there.
# --user makes the files the stages write belong to you; without it they are
# written as the image's user (uid 10001), which needs write access to the checkout.
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD":/work --entrypoint dvc dsm5lab repro
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD":/work --entrypoint dvc dsm5lab exp run -S seed=7
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD":/work --entrypoint dvc dsm5lab:cuda repro
#
# One command (the entrypoint is `dsm5lab`); real ReDSM5 CSVs kept outside the checkout:
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD":/work \
#     -v /path/to/redsm5:/work/data/redsm5:ro dsm5lab prepare --set data.source=csv
#   docker run --rm -v "$PWD":/work dsm5lab predict "I can't sleep and nothing is fun anymore."
#   docker run --rm dsm5lab --help
#
# The Hugging Face Hub is offline (HF_HUB_OFFLINE=1): the default `tiny` and `minilm`
# backbones need nothing from it; for Hub backbones mount a filled cache with
#   -v "$HOME/.cache/huggingface":/home/dsm5lab/.cache/huggingface
# or let it download with -e HF_HUB_OFFLINE=0 -e TRANSFORMERS_OFFLINE=0.
# When /work is mounted, the `dsm5lab` code under /work/src is the code that runs
# (PYTHONPATH), so DVC runs the same code it hashes as stage dependencies; the
# copy installed in the image is used when no checkout is mounted. The Python
# dependencies are the image's (requirements.lock at build time): rebuild after
# changing the lock.

# Both stages use the same base so the venv's interpreter path stays valid.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

# 0: CPU torch from the PyTorch CPU index (no CUDA libraries in the image).
# 1: CUDA torch; by default the PyPI wheel, which bundles the CUDA runtime as
#    nvidia-* wheels. TORCH_INDEX overrides the index either way, for example
#    --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128.
ARG CUDA=0
ARG TORCH_INDEX=
# Must equal the torch pin in requirements.lock (checked below).
ARG TORCH_VERSION=2.13.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the index that decides CPU or CUDA; its own layer, so a
# change to the rest of the lock does not download it again.
RUN if [ "$CUDA" = "1" ]; then \
        index="${TORCH_INDEX:-https://pypi.org/simple}"; \
    elif [ "$CUDA" = "0" ]; then \
        index="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"; \
    else \
        echo "CUDA must be 0 or 1, got '$CUDA'" >&2; exit 1; \
    fi \
    && pip install --index-url "$index" "torch==${TORCH_VERSION}"

WORKDIR /build
COPY requirements.lock ./
# The rest of the pinned lock: torch==X is already met by the X+cpu / X+cuNNN
# build above, and torch's own dependencies are moved to their locked versions.
RUN grep -qx "torch==${TORCH_VERSION}" requirements.lock \
        || { echo "TORCH_VERSION=${TORCH_VERSION} differs from requirements.lock: $(grep '^torch==' requirements.lock)" >&2; exit 1; } \
    && pip install -r requirements.lock

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps . \
    && pip check \
    && python -c "import sys, torch; \
v, cuda = torch.__version__, torch.version.cuda; \
print('torch', v, 'cuda', cuda); \
sys.exit(v.split('+')[0] != '${TORCH_VERSION}' or (cuda is None) != ('${CUDA}' == '0'))" \
    && dsm5lab --help > /dev/null

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

ARG CUDA=0
LABEL org.opencontainers.image.title="dsm5lab" \
      org.opencontainers.image.description="DSM-5 criteria matching and evidence extraction on ReDSM5 (DVC pipeline)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dsm5lab.cuda="${CUDA}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# git: DVC needs it to read the mounted repository. safe.directory: git refuses
# a repository owned by another uid, and /work usually belongs to the host user.
# user.name/email: `dvc exp run` commits experiment refs and stops without an
# identity; this system-level fallback loses to the checkout's .git/config, a
# mounted ~/.gitconfig and GIT_AUTHOR_*/GIT_COMMITTER_* variables.
# DL3008 (pin apt package versions) is ignored on purpose: Debian drops
# superseded versions from its mirrors at every point release, so a pinned git
# would break the build within months. The Debian release is fixed by the base
# image tag. wordnet-base: WordNet 3.0's database files (/usr/share/wordnet),
# the thesaurus of train.augment's synonym method (WordNet 3.0, unchanged since 2006).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git wordnet-base \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory /work \
    && git config --system user.name "dsm5lab container" \
    && git config --system user.email "dsm5lab@localhost"

# Non-root user. HOME and its cache/config folders are writable by any uid so
# that `docker run --user "$(id -u):$(id -g)"` works as well.
RUN groupadd --gid 10001 dsm5lab \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/dsm5lab \
        --shell /usr/sbin/nologin dsm5lab \
    && install -d -m 1777 /home/dsm5lab/.cache /home/dsm5lab/.config /work \
    && chmod 1777 /home/dsm5lab

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONPATH=/work/src \
    HOME=/home/dsm5lab \
    HF_HOME=/home/dsm5lab/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    DVC_NO_ANALYTICS=1 \
    DO_NOT_TRACK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# numeric, so the platform can check it is not root (runAsNonRoot)
USER 10001:10001
WORKDIR /work

ENTRYPOINT ["dsm5lab"]
CMD ["--help"]
