# syntax=docker/dockerfile:1.7
# The reference app image (the web and worker roles; the templates are compiled in). Build
# from the repository root (or with `cargo xtask images`):
#   docker build -f docker/reference-app.Dockerfile -t ghcr.io/cqrs-operator/reference-app:0.1.0 .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package reference-app \
 && cp target/release/reference-app /reference-app

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /reference-app /usr/local/bin/reference-app
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/reference-app"]
