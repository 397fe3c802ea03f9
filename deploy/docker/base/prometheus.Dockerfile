# Prometheus from Debian on the local base image (deploy/docker/build_base.sh): the
# registry-free stand-in for docker-compose.yml's prom/prometheus image. Same contract:
# the entrypoint is the prometheus binary (the compose `command` is its flags), data in
# /prometheus, wget for the healthcheck.
ARG BASE_IMAGE=align-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus wget >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && mkdir -p /prometheus /etc/prometheus && chown prometheus:prometheus /prometheus
WORKDIR /prometheus
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
