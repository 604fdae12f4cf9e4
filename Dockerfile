# smg gateway image.
#
#   docker build -t smg .
#   docker run --rm -p 30000:30000 smg launch --worker-urls http://engine:8000
#   docker run --rm smg mock-worker --host 0.0.0.0 --port 8000 --count 3
#
# The build stage compiles the TypeScript and better-sqlite3's native addon (node-gyp needs python3,
# make and g++ when no prebuilt binary can be downloaded); the runtime stage keeps only dist/, the
# production node_modules and package.json, and runs as the unprivileged `node` user. State
# (--data-dir) lives in the /data volume. See docker-compose.yml for a three-peer mesh.

FROM node:22-slim AS build
WORKDIR /app
RUN apt-get update \
  && apt-get install -y --no-install-recommends python3 make g++ \
  && rm -rf /var/lib/apt/lists/*
# dependencies first, so a source change does not reinstall them
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
# everything tsconfig.json compiles that the gateway needs (bench/ is left out; tests are in .dockerignore)
COPY tsconfig.json ./
COPY src ./src
COPY mesh ./mesh
COPY store ./store
RUN npm run build \
  && find dist \( -name '*.test.js' -o -name '*.test.js.map' \) -delete \
  && npm prune --omit=dev --no-audit --no-fund

FROM node:22-slim
ENV NODE_ENV=production \
  SMG_DATA_DIR=/data
WORKDIR /app
# files stay root-owned (read-only for the gateway); only /data is the node user's
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
RUN mkdir -p /data && chown node:node /data
VOLUME ["/data"]
USER node
# 30000 HTTP (--port), 29000 Prometheus (--prometheus-port), 30001 mesh: SWIM over UDP, libp2p over TCP
EXPOSE 30000 29000 30001/tcp 30001/udp
# no curl in the slim image; Node's fetch probes the main listener (set SMG_PORT if you move it)
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.SMG_PORT || 30000) + '/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/src/cli/main.js"]
CMD ["launch", "--help"]
