# The controller image: a static-ish release build on a distroless, non-root base.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin kpool

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/kpool /usr/local/bin/kpool
USER nonroot
ENTRYPOINT ["/usr/local/bin/kpool"]
CMD ["controller"]
