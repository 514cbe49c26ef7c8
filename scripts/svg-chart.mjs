// A small SVG line-chart writer for `npm run plot`: side-by-side panels sharing one legend, each
// with its own axes, polylines and horizontal reference lines. No dependencies, no browser.

const FONT = "'DejaVu Sans', 'Helvetica Neue', Arial, sans-serif"

function escapeXml(text) {
  return String(text).replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&#39;' })[c])
}

/** A round tick step giving about `count` ticks between 0 and `max`. */
export function niceStep(max, count = 5) {
  if (!(max > 0)) return 1
  const raw = max / count
  const magnitude = 10 ** Math.floor(Math.log10(raw))
  const norm = raw / magnitude
  const nice = norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10
  return nice * magnitude
}

const round = (value) => Math.round(value * 10) / 10

function formatTick(value, step) {
  const decimals = step >= 1 ? 0 : Math.min(3, Math.ceil(-Math.log10(step)))
  return value.toFixed(decimals)
}

function dashAttr(dash) {
  return dash ? ` stroke-dasharray="${dash}"` : ''
}

/** The legend entries, laid out left to right (wrapping) from (x, y); returns the markup and its height. */
function legendMarkup(entries, x, y, maxWidth) {
  const parts = []
  let cx = x
  let cy = y
  for (const entry of entries) {
    const width = 34 + entry.label.length * 7.2 + 18
    if (cx + width > x + maxWidth && cx > x) {
      cx = x
      cy += 20
    }
    parts.push(
      `<line x1="${cx}" y1="${cy}" x2="${cx + 26}" y2="${cy}" stroke="${entry.color}" stroke-width="${entry.width ?? 2.5}"${dashAttr(entry.dash)}/>`,
      `<text x="${cx + 32}" y="${cy + 4.5}" font-size="13" fill="#333">${escapeXml(entry.label)}</text>`,
    )
    cx += width
  }
  return { markup: parts.join('\n'), height: cy - y + 20 }
}

/**
 * @param {object} chart
 * @param {number} chart.width
 * @param {number} chart.height
 * @param {string} chart.title
 * @param {string} [chart.subtitle]
 * @param {Array<{label: string, color: string, dash?: string, width?: number}>} chart.legend
 * @param {Array<{title: string, subtitle?: string | string[], xLabel: string, yLabel: string, xMax: number, yMax: number,
 *   series: Array<{color: string, dash?: string, width?: number, points: Array<[number, number]>}>,
 *   refs?: Array<{y: number, color: string, dash?: string, label?: string}>}>} chart.panels
 * @returns {string} the SVG document
 */
export function lineChart({ width, height, title, subtitle, legend, panels }) {
  const out = []
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="${FONT}">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="16" y="26" font-size="17" font-weight="bold" fill="#1d232b">${escapeXml(title)}</text>`,
  )
  let top = 34
  if (subtitle) {
    out.push(`<text x="16" y="${top + 14}" font-size="13" fill="#5f6b7a">${escapeXml(subtitle)}</text>`)
    top += 22
  }
  const legendBlock = legendMarkup(legend, 20, top + 12, width - 40)
  out.push(legendBlock.markup)
  top += legendBlock.height + 10

  const gap = 18
  const panelWidth = (width - 16 - gap * (panels.length - 1) - 16) / panels.length
  const subtitleLines = (panel) => (panel.subtitle === undefined ? [] : [].concat(panel.subtitle))
  // the same title block height in every panel, so the plots line up
  const titleHeight = 20 + 16 * Math.max(0, ...panels.map((panel) => subtitleLines(panel).length))
  panels.forEach((panel, index) => {
    const px = 16 + index * (panelWidth + gap)
    const marginLeft = 48
    const marginBottom = 42
    const plot = {
      x: px + marginLeft,
      y: top + titleHeight + 8,
      w: panelWidth - marginLeft - 8,
      h: height - top - titleHeight - 8 - marginBottom,
    }
    const sx = (x) => round(plot.x + (x / panel.xMax) * plot.w)
    const sy = (y) => round(plot.y + plot.h - (Math.min(y, panel.yMax) / panel.yMax) * plot.h)

    out.push(`<g>`)
    out.push(`<text x="${px + marginLeft}" y="${top + 14}" font-size="14" font-weight="bold" fill="#1d232b">${escapeXml(panel.title)}</text>`)
    subtitleLines(panel).forEach((line, i) => {
      out.push(`<text x="${px + marginLeft}" y="${top + 31 + i * 16}" font-size="12" fill="#5f6b7a">${escapeXml(line)}</text>`)
    })
    // grid and y ticks
    const yStep = niceStep(panel.yMax, 5)
    for (let v = 0; v <= panel.yMax + 1e-9; v += yStep) {
      const y = sy(v)
      out.push(`<line x1="${plot.x}" y1="${y}" x2="${plot.x + plot.w}" y2="${y}" stroke="#e8ebef" stroke-width="1"/>`)
      out.push(`<text x="${plot.x - 6}" y="${y + 4}" font-size="12" fill="#5f6b7a" text-anchor="end">${formatTick(v, yStep)}</text>`)
    }
    // x ticks
    const xStep = niceStep(panel.xMax, 5)
    for (let v = 0; v <= panel.xMax + 1e-9; v += xStep) {
      const x = sx(v)
      out.push(`<line x1="${x}" y1="${plot.y + plot.h}" x2="${x}" y2="${plot.y + plot.h + 4}" stroke="#8a94a0" stroke-width="1"/>`)
      out.push(`<text x="${x}" y="${plot.y + plot.h + 18}" font-size="12" fill="#5f6b7a" text-anchor="middle">${formatTick(v, xStep)}</text>`)
    }
    out.push(
      `<text x="${plot.x + plot.w / 2}" y="${plot.y + plot.h + 36}" font-size="12" fill="#5f6b7a" text-anchor="middle">${escapeXml(panel.xLabel)}</text>`,
      `<text transform="translate(${px + 12} ${plot.y + plot.h / 2}) rotate(-90)" font-size="12" fill="#5f6b7a" text-anchor="middle">${escapeXml(panel.yLabel)}</text>`,
    )
    // reference lines, then series, then the axes on top
    for (const ref of panel.refs ?? []) {
      const y = sy(ref.y)
      out.push(`<line x1="${plot.x}" y1="${y}" x2="${plot.x + plot.w}" y2="${y}" stroke="${ref.color}" stroke-width="1.2"${dashAttr(ref.dash)}/>`)
      if (ref.label) {
        out.push(`<text x="${plot.x + plot.w - 4}" y="${y - 4}" font-size="11" fill="${ref.color}" text-anchor="end">${escapeXml(ref.label)}</text>`)
      }
    }
    for (const series of panel.series) {
      if (series.points.length === 0) continue
      const points = series.points.map(([x, y]) => `${sx(x)},${sy(y)}`).join(' ')
      out.push(
        `<polyline fill="none" stroke="${series.color}" stroke-width="${series.width ?? 2}" stroke-linejoin="round"${dashAttr(series.dash)}${series.opacity ? ` stroke-opacity="${series.opacity}"` : ''} points="${points}"/>`,
      )
    }
    out.push(
      `<line x1="${plot.x}" y1="${plot.y}" x2="${plot.x}" y2="${plot.y + plot.h}" stroke="#8a94a0" stroke-width="1"/>`,
      `<line x1="${plot.x}" y1="${plot.y + plot.h}" x2="${plot.x + plot.w}" y2="${plot.y + plot.h}" stroke="#8a94a0" stroke-width="1"/>`,
    )
    out.push(`</g>`)
  })
  out.push('</svg>')
  return out.join('\n') + '\n'
}
