// ESM entry of `trypema/fastify`: the same plugin as the CommonJS entry.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const plugin = require('./fastify.js')

export const { trypemaRateLimit, defaultKey, safeKey } = plugin
export default plugin
