# The controller image: one static kpool binary on an empty base (no shell, no libc to
# patch), the CA bundle for the clouds' APIs, and a passwd naming the non-root user 65532.
# Works with a read-only root filesystem; kpool writes nothing to disk.
#
#   docker build -t kpool:0.1.0 .
#       builds kpool inside a Rust container (target `image`, the default). Choose the
#       builder with --build-arg RUST_IMAGE=… (any Debian-based image with cargo).
#   scripts/image.sh
#       builds kpool on the host and the image with podman, no registry needed (target
#       `local`: copies the root filesystem the script assembled in target/image/rootfs).
#       By hand: scripts/image.sh rootfs target/image/rootfs &&
#                docker build --target local -f Dockerfile -t kpool:0.1.0 target/image
#
# Both targets assemble the root filesystem with the same `scripts/image.sh rootfs`.

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches benches
COPY src src
COPY scripts/image.sh scripts/image.sh
RUN scripts/image.sh rootfs /rootfs

# The image from a root filesystem assembled outside (context: the directory holding rootfs/).
FROM scratch AS local
COPY rootfs/ /
USER 65532:65532
ENV HOME=/home/nonroot
ENTRYPOINT ["/usr/local/bin/kpool"]
CMD ["controller"]

# The default target: the image from the root filesystem built above.
FROM scratch AS image
COPY --from=build /rootfs/ /
USER 65532:65532
ENV HOME=/home/nonroot
ENTRYPOINT ["/usr/local/bin/kpool"]
CMD ["controller"]
