// Wrapper module: the S3 server the backup tests write to, built from the Go module proxy (MinIO publishes no
// tagged module versions: the pin is a pseudo-version of its main branch).
module mlinfra.io/e2e/tools/minio

go 1.26.0

require github.com/minio/minio v0.0.0-20260212201848-7aac2a2c5b7c
