// Reads the glibc symbol versions an ELF shared object (the addon's `.node` file) needs, by
// parsing the file itself (no objdump needed), and fails when one is newer than the floor the
// linux-gnu packages promise. A binary that needs GLIBC_2.34 does not load on glibc 2.28
// (Debian 10, RHEL 8) at all: `dlopen` fails with "version `GLIBC_2.34' not found".
//
//   node scripts/check-glibc.mjs [--max 2.28] [file.node ...]
//
// Without files it checks the linux gnu addons in dist/'s tarballs (`npm run package`), or else
// the development builds in the package root. Prints every required
// version and the symbols that need the newest one; exits 1 when a file needs more than --max
// (default 2.28) or GLIBC_PRIVATE, 2 on a usage or read error.
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The newest glibc a linux-gnu package may require. Releases are built against 2.17. */
export const GLIBC_CEILING = '2.28'

const SHT_SYMTAB = 2
const SHT_DYNSYM = 11
const SHT_DYNAMIC = 6
const SHT_GNU_VERNEED = 0x6ffffffe
const SHT_GNU_VERSYM = 0x6fffffff
const DT_NEEDED = 1

function reader(buffer) {
  if (buffer.length < 64 || buffer.readUInt32BE(0) !== 0x7f454c46) {
    throw new Error('not an ELF file (the glibc check applies to Linux binaries only)')
  }
  const is64 = buffer[4] === 2
  const le = buffer[5] === 1
  const u16 = (offset) => (le ? buffer.readUInt16LE(offset) : buffer.readUInt16BE(offset))
  const u32 = (offset) => (le ? buffer.readUInt32LE(offset) : buffer.readUInt32BE(offset))
  const u64 = (offset) => Number(le ? buffer.readBigUInt64LE(offset) : buffer.readBigUInt64BE(offset))
  const addr = is64 ? u64 : u32
  const cstring = (offset) => {
    const end = buffer.indexOf(0, offset)
    return buffer.toString('latin1', offset, end === -1 ? buffer.length : end)
  }
  return { is64, u16, u32, addr, cstring }
}

function sections(elf, buffer) {
  const { is64, u16, u32, addr } = elf
  const shoff = addr(is64 ? 0x28 : 0x20)
  const shentsize = u16(is64 ? 0x3a : 0x2e)
  const shnum = u16(is64 ? 0x3c : 0x30)
  if (shoff === 0 || shnum === 0 || shoff + shnum * shentsize > buffer.length) {
    throw new Error('the ELF file has no section headers')
  }
  const list = []
  for (let i = 0; i < shnum; i++) {
    const base = shoff + i * shentsize
    list.push(
      is64
        ? {
            type: u32(base + 4),
            offset: addr(base + 0x18),
            size: addr(base + 0x20),
            link: u32(base + 0x28),
            info: u32(base + 0x2c),
            entsize: addr(base + 0x38),
          }
        : {
            type: u32(base + 4),
            offset: u32(base + 0x10),
            size: u32(base + 0x14),
            link: u32(base + 0x18),
            info: u32(base + 0x1c),
            entsize: u32(base + 0x24),
          },
    )
  }
  return list
}

/** Whether the file still has a static symbol table (.symtab), i.e. was not stripped. */
export function hasSymbolTable(path) {
  const buffer = readFileSync(path)
  const elf = reader(buffer)
  return sections(elf, buffer).some((section) => section.type === SHT_SYMTAB)
}

/** Splits `GLIBC_2.17` into [2, 17]; null for anything else (GLIBC_PRIVATE, GCC_3.0, ...). */
export function parseGlibcVersion(name) {
  const match = /^GLIBC_(\d+(?:\.\d+)*)$/.exec(name)
  return match ? match[1].split('.').map(Number) : null
}

export function compareVersions(a, b) {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0)
    if (d !== 0) return d
  }
  return 0
}

/**
 * What an ELF shared object needs from the dynamic linker.
 * @returns {{ needed: string[], versions: { library: string, version: string, weak: boolean, symbols: string[] }[], maxGlibc: string | null, private: boolean }}
 */
export function readVersionNeeds(path) {
  const buffer = readFileSync(path)
  const elf = reader(buffer)
  const list = sections(elf, buffer)
  const { is64, u16, u32, addr, cstring } = elf

  // DT_NEEDED entries: the shared libraries the file links against.
  const needed = []
  for (const section of list.filter((s) => s.type === SHT_DYNAMIC)) {
    const strtab = list[section.link].offset
    const entsize = is64 ? 16 : 8
    for (let at = section.offset; at + entsize <= section.offset + section.size; at += entsize) {
      const tag = addr(at)
      if (tag === 0) break
      if (tag === DT_NEEDED) needed.push(cstring(strtab + addr(at + (is64 ? 8 : 4))))
    }
  }

  // .gnu.version_r: per library, the versions it must provide, each with its index.
  const byIndex = new Map()
  const versions = []
  for (const section of list.filter((s) => s.type === SHT_GNU_VERNEED)) {
    const strtab = list[section.link].offset
    let entry = section.offset
    for (let i = 0; i < section.info; i++) {
      const count = u16(entry + 2)
      const library = cstring(strtab + u32(entry + 4))
      let aux = entry + u32(entry + 8)
      for (let j = 0; j < count; j++) {
        // VER_FLG_WEAK (2): the loader only warns when the library lacks this version.
        const weak = (u16(aux + 4) & 2) !== 0
        const record = { library, version: cstring(strtab + u32(aux + 8)), weak, symbols: [] }
        versions.push(record)
        byIndex.set(u16(aux + 6) & 0x7fff, record)
        const next = u32(aux + 12)
        if (next === 0) break
        aux += next
      }
      const next = u32(entry + 12)
      if (next === 0) break
      entry += next
    }
  }

  // .dynsym + .gnu.version: which imported symbol needs which version.
  const dynsym = list.find((s) => s.type === SHT_DYNSYM)
  const versym = list.find((s) => s.type === SHT_GNU_VERSYM)
  if (dynsym && versym) {
    const strtab = list[dynsym.link].offset
    const entsize = dynsym.entsize || (is64 ? 24 : 16)
    const count = Math.floor(dynsym.size / entsize)
    for (let i = 0; i < count; i++) {
      const base = dynsym.offset + i * entsize
      const shndx = u16(base + (is64 ? 6 : 14))
      if (shndx !== 0) continue // defined here, not imported
      const record = byIndex.get(u16(versym.offset + i * 2) & 0x7fff)
      if (record) record.symbols.push(cstring(strtab + u32(base)))
    }
  }

  let max = null
  for (const { version, weak } of versions) {
    const parsed = weak ? null : parseGlibcVersion(version)
    if (parsed && (max === null || compareVersions(parsed, max) > 0)) max = parsed
  }
  return {
    needed,
    versions,
    maxGlibc: max === null ? null : max.join('.'),
    private: versions.some((v) => v.version === 'GLIBC_PRIVATE'),
  }
}

/**
 * Throws when `path` needs a glibc newer than `ceiling` (or GLIBC_PRIVATE); returns what it needs.
 */
export function checkGlibc(path, { ceiling = GLIBC_CEILING } = {}) {
  const needs = readVersionNeeds(path)
  const problems = []
  if (needs.private) problems.push('it uses GLIBC_PRIVATE symbols')
  if (needs.maxGlibc !== null && compareVersions(parseGlibcVersion(`GLIBC_${needs.maxGlibc}`), parseGlibcVersion(`GLIBC_${ceiling}`)) > 0) {
    const culprits = needs.versions
      .filter((v) => {
        const parsed = !v.weak && parseGlibcVersion(v.version)
        return parsed && compareVersions(parsed, parseGlibcVersion(`GLIBC_${ceiling}`)) > 0
      })
      .map((v) => `${v.version} (${v.symbols.join(', ') || 'no symbol named'})`)
    problems.push(`it needs glibc ${needs.maxGlibc} > ${ceiling}: ${culprits.join('; ')}`)
  }
  if (problems.length > 0) {
    const error = new Error(
      `${path}: ${problems.join(' and ')}. Build it the way releases are built ` +
        '(`npm run package`: cargo-zigbuild with --target x86_64-unknown-linux-gnu.2.17).',
    )
    error.needs = needs
    throw error
  }
  return needs
}

async function main(argv) {
  let ceiling = GLIBC_CEILING
  let work = null
  const files = []
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--max') ceiling = argv[++i]
    else if (argv[i].startsWith('--max=')) ceiling = argv[i].slice(6)
    else files.push(argv[i])
  }
  if (!/^\d+\.\d+$/.test(ceiling ?? '')) {
    console.error('usage: node scripts/check-glibc.mjs [--max 2.28] [file.node ...]')
    return 2
  }
  if (files.length === 0) {
    // The release binaries in dist/ (`npm run package`), else the development builds in the
    // package root (`npm run build`, linked against this machine's glibc: expect a failure).
    const root = fileURLToPath(new URL('..', import.meta.url))
    const dist = join(root, 'dist')
    const tarballs = existsSync(dist) ? readdirSync(dist).filter((name) => /-linux-[a-z0-9]+-gnu-.*\.tgz$/.test(name)) : []
    if (tarballs.length > 0) {
      const { readTarball } = await import('./install-test.mjs')
      work = mkdtempSync(join(tmpdir(), 'trypema-glibc-'))
      for (const tarball of tarballs) {
        for (const [path, content] of Object.entries(readTarball(join(dist, tarball)))) {
          if (!path.endsWith('.node')) continue
          const file = join(work, path.split('/').pop())
          writeFileSync(file, content)
          files.push(file)
        }
      }
    } else {
      for (const name of readdirSync(root)) {
        if (/^trypema\.linux-[a-z0-9]+-gnu\.node$/.test(name)) files.push(join(root, name))
      }
    }
    if (files.length === 0) {
      console.error('no file given, no linux gnu tarball in dist/ and no trypema.linux-*-gnu.node in the package root')
      return 2
    }
  }
  let status = 0
  for (const file of files) {
    let needs
    try {
      needs = readVersionNeeds(file)
    } catch (error) {
      console.error(`${file}: ${error.message}`)
      status = Math.max(status, 2)
      continue
    }
    console.log(`${file}`)
    console.log(`  shared libraries: ${needs.needed.join(', ') || '(none)'}`)
    for (const v of needs.versions) {
      console.log(`  ${v.library.padEnd(20)} ${v.version.padEnd(12)} ${String(v.symbols.length).padStart(3)} symbols${v.weak ? ' (weak)' : ''}`)
    }
    const newest = needs.versions.filter((v) => needs.maxGlibc !== null && v.version === `GLIBC_${needs.maxGlibc}`)
    for (const v of newest) console.log(`  needs GLIBC_${needs.maxGlibc} for: ${v.symbols.join(', ') || '(no symbol named)'}`)
    try {
      checkGlibc(file, { ceiling })
      console.log(`  max GLIBC version: ${needs.maxGlibc ?? 'none'} (ceiling ${ceiling}): ok`)
    } catch (error) {
      console.error(`  FAIL: ${error.message}`)
      status = Math.max(status, 1)
    }
  }
  if (work !== null) rmSync(work, { recursive: true, force: true })
  return status
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  process.exitCode = await main(process.argv.slice(2))
}
