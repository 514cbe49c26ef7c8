// ESM entry: the same classes as the CommonJS entry, so `instanceof` agrees across both.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const trypema = require('./index.js')

export const { RateLimiter, RateLimiterBuilder } = trypema
export default trypema
