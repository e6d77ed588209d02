import { defineConfig } from 'prisma/config'

// Migrations are applied by `npm run migrate` (src/database/migrator.ts), which keeps
// `_prisma_migrations` compatible so `prisma migrate deploy` works where Prisma's
// native schema engine is available.
export default defineConfig({
  schema: 'prisma/schema.prisma',
  migrations: { path: 'prisma/migrations' },
  datasource: { url: process.env.DATABASE_URL ?? 'postgresql://localhost/chroma_lease' },
})
