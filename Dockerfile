# Production image: `billing-service serve` as a non-root user. Run migrations separately with
# `docker run --rm -e BILLING_DATABASE_URL=... IMAGE billing-service migrate`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md openapi.yaml catalog.example.yaml ./
COPY billing_service ./billing_service
COPY db ./db
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
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
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BILLING_PORT', '8000') + '/healthz', timeout=2)"]
CMD ["billing-service", "serve"]
