# specufex-dask container image: one image for the Dask scheduler, the workers and the
# pipeline job (see docker-compose.yml and deploy/kubernetes).
#
#   docker build -t specufex-dask:0.1.0 .
#
# Versions are pinned: the base image by tag (pin a digest with
#   --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...
# for bit-for-bit rebuilds) and the Python packages by deploy/docker/constraints.txt.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The processes run as an unprivileged user with a fixed uid/gid so that files written
# to shared volumes have a predictable owner.
ARG APP_UID=1000
ARG APP_GID=1000
RUN groupadd --gid "${APP_GID}" specufex \
    && useradd --uid "${APP_UID}" --gid "${APP_GID}" --create-home --shell /usr/sbin/nologin specufex

WORKDIR /opt/specufex-dask
COPY deploy/docker/constraints.txt /opt/specufex-dask/constraints.txt
COPY pyproject.toml README.md /opt/specufex-dask/
COPY specufex_dask /opt/specufex-dask/specufex_dask
# bokeh serves the scheduler dashboard; the extras bring waveform reading (obspy),
# figures (matplotlib) and fingerprint clustering (scikit-learn).
RUN pip install --constraint constraints.txt ".[obspy,plot,cluster]" bokeh \
    && specufex-dask --help > /dev/null \
    && dask scheduler --help > /dev/null

# /data is where the archive lives (a volume in docker-compose.yml). Creating it here,
# owned by the app user, gives a new named volume that owner.
RUN mkdir -p /data && chown specufex:specufex /data
VOLUME ["/data"]
WORKDIR /data
USER specufex

EXPOSE 8786 8787
CMD ["specufex-dask", "--help"]
