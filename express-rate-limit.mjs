// ESM entry of `trypema/express-rate-limit`: the same class as the CommonJS entry.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const trypemaExpressRateLimit = require('./express-rate-limit.js')

export const { TrypemaStore } = trypemaExpressRateLimit
export default trypemaExpressRateLimit
