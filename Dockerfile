# syntax=docker/dockerfile:1
# The control plane: `npm start` (src/server.ts, bundled by esbuild) in a non-root image.
#   docker build -t chroma-lease .
# The session image is container/Dockerfile. test/control-plane-image.test.ts runs every RUN
# below from this file but the chown, then the CMD and HEALTHCHECK.

# --- build: install, generate the Prisma client (postinstall), drop dev dependencies, bundle
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json prisma.config.ts tsconfig.json ./
COPY scripts scripts
COPY prisma prisma
# the workspace package (@chroma-lease/client): npm ci links and builds it; the CLI bundle uses it
COPY packages packages
RUN npm ci --no-audit --no-fund \
 && npm prune --omit=dev --no-audit --no-fund
COPY src src
COPY container container
COPY bin bin
RUN node scripts/build.mjs

# --- runtime
FROM node:20-bookworm-slim
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
CMD ["node", "--enable-source-maps", "dist/server.js"]
