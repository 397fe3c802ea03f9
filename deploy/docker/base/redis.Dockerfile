# Redis from Debian on the local base image (deploy/docker/build_base.sh): the registry-free
# stand-in for docker-compose.yml's redis image. Same contract: `redis-server ARGS` as the
# command, data in /data (the redis-data volume), redis-cli for the healthcheck.
ARG BASE_IMAGE=align-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
