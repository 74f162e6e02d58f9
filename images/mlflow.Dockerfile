# syntax=docker/dockerfile:1.7
# ovpipe-mlflow: the MLflow tracking server charts/ovpipe deploys (sqlite on a volume or Postgres; artifacts
# in S3 through boto3). Build from the repository root (or `make images`):
#   docker build -f images/mlflow.Dockerfile -t ghcr.io/ovpipe/ovpipe-mlflow:0.1.0 .
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY constraints.txt images/mlflow-requirements.txt /tmp/
# constraints.txt less the released pins (see mlflow-requirements.txt)
RUN released=$(sed -n 's/^# released-pins: *//p' /tmp/mlflow-requirements.txt) \
 && for p in $released; do sed -i "/^$p==/Id" /tmp/constraints.txt; done \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir pip==26.3 \
 && /opt/venv/bin/pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/mlflow-requirements.txt \
 && /opt/venv/bin/pip check

FROM ${BASE_IMAGE} AS runtime
RUN groupadd --gid 1000 mlflow \
 && useradd --uid 1000 --gid 1000 --home-dir /home/mlflow --create-home --shell /usr/sbin/nologin mlflow
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
LABEL org.opencontainers.image.title="ovpipe-mlflow" \
      org.opencontainers.image.description="MLflow tracking server for ovpipe (charts/ovpipe)" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 1000:1000
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--workers", "1"]
