# syntax=docker/dockerfile:1.7
# The operator image. Build from the repository root (or with `cargo xtask images`):
#   docker build -f docker/operator.Dockerfile -t ghcr.io/cqrs-operator/cqrs-operator:0.1.0 .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package cqrs-operator \
 && cp target/release/cqrs-operator /cqrs-operator

# Distroless: glibc and CA certificates, no shell, no package manager; runs as 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /cqrs-operator /usr/local/bin/cqrs-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cqrs-operator"]
CMD ["run"]
