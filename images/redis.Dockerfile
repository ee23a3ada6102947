# redis-server for the chart's bundled Redis (redis.enabled): Debian's package, uid 65532,
# no entrypoint script. The chart runs `redis-server /etc/redis/redis.conf` with a
# read-only root filesystem and /data on a PersistentVolumeClaim. /etc/redis is opened to
# all (Debian's package makes it 2770 redis:redis, which uid 65532 cannot enter to read
# the chart's redis.conf mounted there).
#
#   docker build -f images/redis.Dockerfile -t ghcr.io/workpool-dev/workpool-redis:0.1.0 images
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* /etc/redis/redis.conf \
 && mkdir -p /data /etc/redis \
 && chmod 0755 /etc/redis \
 && chown 65532:65532 /data \
 && redis-server --version
WORKDIR /data
USER 65532:65532
EXPOSE 6379
ENTRYPOINT []
CMD ["redis-server", "--dir", "/data", "--appendonly", "yes", "--protected-mode", "no"]
