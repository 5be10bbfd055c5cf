# Dockerfile builds the tokenkeeper image from source: a Go builder stage, then
# a FROM scratch runtime with the static binary alone, run as a numeric
# non-root user. Outbound TLS roots are compiled in
# (golang.org/x/crypto/x509roots/fallback), so the image needs no CA bundle.
#
#   docker build -t tokenkeeper:dev .          (or: docker compose build)
#
# Without a registry (no golang image to pull), build the binary on the host
# and wrap it with Dockerfile.prebuilt: scripts/build-images.sh does that.
ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/tokenkeeper ./cmd/tokenkeeper

FROM scratch
COPY --from=build /out/tokenkeeper /tokenkeeper
USER 65532:65532
EXPOSE 8080
# No shell in the image: the binary checks its own /readyz.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/tokenkeeper", "healthcheck"]
ENTRYPOINT ["/tokenkeeper"]
CMD ["serve"]
