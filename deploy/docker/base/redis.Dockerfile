# Redis from Debian on the local base image (deploy/docker/build_base.sh): the registry-free
# stand-in for docker-compose.yml's redis image. Same contract: `redis-server ARGS` as the
# command, data in /data (the redis-data volume), redis-cli for the healthcheck, and the
# same uid:gid for the redis user (999:1000; docker-compose.yml runs it as that user).
ARG BASE_IMAGE=align-base:bookworm
FROM ${BASE_IMAGE}
RUN groupadd --system --gid 1000 redis \
    && useradd --system --uid 999 --gid redis --home-dir /var/lib/redis --shell /usr/sbin/nologin redis \
    && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
