# Dockerfile builds the tokenkeeper image from source: a Go builder stage, then
# a FROM scratch runtime with the static binary alone, run as a numeric
# non-root user. Outbound TLS roots are compiled in
# (golang.org/x/crypto/x509roots/fallback), so the image needs no CA bundle.
#
#   docker build -t tokenkeeper:dev .          (or: docker compose build)
#   docker build --build-arg VERSION=0.1.0 --build-arg COMMIT=$(git rev-parse HEAD) \
#       --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) -t tokenkeeper/tokenkeeper:0.1.0 .
#
# VERSION and COMMIT are stamped into the binary (tokenkeeper version, the
# replica_info metric) and, with CREATED, into the image's OCI labels.
#
# Without a registry (no golang image to pull), build the binary on the host
# and wrap it with Dockerfile.prebuilt: scripts/build-images.sh does that, and
# scripts/release.sh for a release.
ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
ARG VERSION=dev
ARG COMMIT=unknown
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath \
    -ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
    -o /out/tokenkeeper ./cmd/tokenkeeper

FROM scratch
ARG VERSION=dev
ARG COMMIT=unknown
ARG CREATED=
ARG SOURCE=https://github.com/tokenkeeper/tokenkeeper
# The repository names no licence yet: NOASSERTION (SPDX) until it does.
ARG LICENSES=NOASSERTION
LABEL org.opencontainers.image.title="tokenkeeper" \
      org.opencontainers.image.description="One short-lived upstream token kept for a fleet of stateless replicas, shared through Redis" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.url="${SOURCE}" \
      org.opencontainers.image.documentation="${SOURCE}#readme" \
      org.opencontainers.image.licenses="${LICENSES}"
COPY --from=build /out/tokenkeeper /tokenkeeper
USER 65532:65532
EXPOSE 8080
# No shell in the image: the binary checks its own /readyz.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/tokenkeeper", "healthcheck"]
ENTRYPOINT ["/tokenkeeper"]
CMD ["serve"]
