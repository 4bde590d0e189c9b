# Production image: `billing-service serve` as a non-root user. Run migrations separately with
# `docker run --rm -e BILLING_DATABASE_URL=... IMAGE billing-service migrate`.
#
# The base image is pinned by digest: the multi-platform index python:3.11-slim pointed to in
# October 2026 (Python 3.11.17 on Debian 13; linux/amd64 manifest sha256:922f4752…). The tag is
# only a reminder. To move to a newer base, read the current index digest and replace both lines:
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
FROM python:3.11-slim@sha256:6f31d6e9ba2b0a787a3f81c37b004155b87b9efa1b771182bd550c1615745be5 AS build
WORKDIR /src
# Dependencies first, read from pyproject.toml alone: this layer is rebuilt only when they change,
# not on every change to the source.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
    && pip install --no-cache-dir --prefix=/install -r requirements.txt
# Then the project itself, without touching the dependencies installed above.
COPY README.md openapi.yaml catalog.example.yaml ./
COPY db ./db
COPY billing_service ./billing_service
RUN pip install --no-cache-dir --no-deps --prefix=/install .

FROM python:3.11-slim@sha256:6f31d6e9ba2b0a787a3f81c37b004155b87b9efa1b771182bd550c1615745be5
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BILLING_ENV=production \
    BILLING_HOST=0.0.0.0 \
    BILLING_PORT=8000
RUN groupadd --system --gid 10001 billing \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin billing
COPY --from=build /install /usr/local
USER 10001:10001
EXPOSE 8000
# GET /healthz on BILLING_HOST:BILLING_PORT (loopback for 0.0.0.0); exit 0 on 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["billing-service", "healthcheck"]
CMD ["billing-service", "serve"]
