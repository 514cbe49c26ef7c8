// ESM entry of `trypema/express`: the same functions as the CommonJS entry.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const trypemaExpress = require('./express.js')

export const { rateLimit, defaultKey, safeKey } = trypemaExpress
export default trypemaExpress
