// The live page: one uPlot chart per limited route, fed by /demo/events (server-sent events).
// The server sends the last minute on connect ("snapshot"), then one closed second per "tick".
/* global uPlot */
'use strict'

;(function () {
  const SERIES = [
    { key: 'admitted', label: 'admitted', stroke: '#2e7d32' },
    { key: 'suppressedAdmitted', label: 'admitted while suppressing', stroke: '#00a0b0' },
    { key: 'rejected', label: 'rejected (429)', stroke: '#c62828' },
    { key: 'declined', label: 'declined (503)', stroke: '#ef6c00' },
    { key: 'errors', label: 'errors (failed open)', stroke: '#7b1fa2', dash: [4, 3] },
    { key: 'degraded', label: 'degraded (decided locally, Redis down)', stroke: '#8d6e63', dash: [2, 2] },
  ]

  /** What tests and curious visitors can read: `window.trypemaDashboard.charts.hello.data`. */
  const dashboard = { ready: false, ticks: 0, config: null, charts: {}, routes: {} }
  window.trypemaDashboard = dashboard

  const $ = (id) => document.getElementById(id)
  let config = null
  let outcomeIndex = {} // outcome name -> column in the server's counts

  function post(url, body) {
    return fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body ?? {}),
    }).then(async (response) => {
      const data = await response.json().catch(() => ({}))
      if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`)
      return data
    })
  }

  function policyText(route) {
    const limit =
      route.strategy === 'absolute'
        ? `${route.quota} per ${config.windowSeconds} s, then ${route.limitedStatus}`
        : `soft ${route.quota}, hard ${route.hardQuota} per ${config.windowSeconds} s, declined → ${route.limitedStatus}`
    return `${route.provider} · ${route.strategy} · ${route.rate}/s · ${limit}`
  }

  function chartWidth(card) {
    return Math.max(320, card.querySelector('.chart').clientWidth || card.clientWidth - 24)
  }

  /** Builds a route's card and its chart (empty data: the snapshot fills it). */
  function buildRoute(route) {
    const card = $('route-card').content.firstElementChild.cloneNode(true)
    card.dataset.route = route.id
    card.querySelector('.method').textContent = route.method
    const link = card.querySelector('.path')
    link.textContent = route.path
    link.href = route.samplePath
    card.querySelector('.policy').textContent = policyText(route)
    card.querySelector('.description').textContent = route.description
    if (route.strategy !== 'suppressed') card.querySelector('.factor-fact').hidden = true
    for (const button of card.querySelectorAll('.controls button')) {
      button.addEventListener('click', () => startBurst(route.id, Number(button.dataset.multiple)))
    }
    $('routes').append(card)

    const suppressed = route.strategy === 'suppressed'
    const series = [
      {},
      ...SERIES.filter((s) => (suppressed ? s.key !== 'rejected' : s.key !== 'suppressedAdmitted' && s.key !== 'declined')).map(
        (s) => ({ label: s.label, stroke: s.stroke, width: 2, dash: s.dash, points: { show: false }, key: s.key }),
      ),
    ]
    if (suppressed) {
      series.push({ label: 'suppression factor', stroke: '#1565c0', width: 1.5, dash: [6, 4], scale: 'f', points: { show: false }, key: 'factor' })
    }
    const axes = [
      { stroke: '#5f6b7a', grid: { stroke: '#eef0f3' } },
      { label: 'requests / s', stroke: '#5f6b7a', grid: { stroke: '#eef0f3' }, size: 50 },
    ]
    if (suppressed) axes.push({ scale: 'f', side: 1, label: 'factor', stroke: '#1565c0', grid: { show: false }, size: 45 })
    const chart = new uPlot(
      {
        width: chartWidth(card),
        height: 230,
        series,
        scales: {
          // always the last minute, however long the server has been running
          x: {
            time: true,
            range: (u, min, max) => {
              const end = max == null ? Math.floor(Date.now() / 1000) : max
              return [end - config.historySeconds + 1, end]
            },
          },
          y: { range: (u, min, max) => [0, Math.max(route.rate * 2, Math.ceil((max || 0) * 1.15))] },
          f: { range: [0, 1] },
        },
        axes,
        legend: { live: true },
        cursor: { drag: { x: false, y: false } },
        hooks: { drawClear: [shadeOutages] },
      },
      series.map(() => []),
      card.querySelector('.chart'),
    )
    chart.seriesKeys = series.map((s) => s.key)
    dashboard.charts[route.id] = chart
    dashboard.routes[route.id] = { card, route, columns: series.map(() => []) }
  }

  /** Seconds during which the example's redis-server was stopped (shaded on every chart). */
  let downSeconds = new Set()

  /** Shades the outage seconds behind the lines. */
  function shadeOutages(u) {
    if (downSeconds.size === 0) return
    const { ctx } = u
    const { top, height } = u.bbox
    ctx.save()
    ctx.fillStyle = 'rgba(198, 40, 40, 0.10)'
    for (const t of downSeconds) {
      const left = u.valToPos(t - 0.5, 'x', true)
      const right = u.valToPos(t + 0.5, 'x', true)
      ctx.fillRect(left, top, right - left, height)
    }
    ctx.restore()
  }

  /** Appends one closed second to every route's columns (keeping the last minute). */
  function addEntry(entry) {
    if (entry.down) downSeconds.add(entry.t)
    for (const t of downSeconds) if (t <= entry.t - config.historySeconds) downSeconds.delete(t)
    for (const [id, view] of Object.entries(dashboard.routes)) {
      const counts = entry.c[id] || []
      const chart = dashboard.charts[id]
      chart.seriesKeys.forEach((key, i) => {
        let value
        if (i === 0) value = entry.t
        else if (key === 'factor') {
          // null in the chart (a gap) both before the first request and when the call failed
          value = entry.f[id] === undefined ? null : entry.f[id]
          view.factor = entry.f[id]
        }
        else value = counts[outcomeIndex[key]] || 0
        view.columns[i].push(value)
        if (view.columns[i].length > config.historySeconds) view.columns[i].shift()
      })
    }
  }

  function redraw() {
    for (const [id, view] of Object.entries(dashboard.routes)) {
      const chart = dashboard.charts[id]
      chart.setData(view.columns.map((column) => column.slice()))
      const totals = {}
      chart.seriesKeys.forEach((key, i) => {
        if (i === 0 || key === 'factor') return
        totals[key] = view.columns[i].reduce((a, b) => a + b, 0)
        view.card.dataset[key] = String(totals[key])
      })
      view.card.querySelector('.totals').textContent = chart.seriesKeys
        .map((key, i) => (i === 0 || key === 'factor' ? null : `${totals[key]} ${SERIES.find((s) => s.key === key).label.replace(/ \(.*\)$/, '')}`))
        .filter(Boolean)
        .join(' · ')
      if (chart.seriesKeys.includes('factor')) {
        const last = view.factor
        view.card.querySelector('.factor').textContent =
          last === undefined ? '– (no request yet)' : last === null ? 'unknown (the call failed)' : last.toFixed(3)
        if (typeof last === 'number') view.card.dataset.factor = String(last)
      }
    }
    document.body.dataset.ticks = String(dashboard.ticks)
  }

  function showState(state) {
    const redis = state.redis
    const badge = $('redis-badge')
    badge.className = 'badge'
    if (!redis.managed) {
      badge.textContent = redis.url ? 'external' : 'not used'
      badge.classList.add('external')
    } else {
      badge.textContent = redis.busy ? '…' : redis.up ? 'up' : 'down'
      badge.classList.add(redis.up ? 'up' : 'down')
    }
    $('redis').dataset.up = String(redis.up)
    $('redis-stop').disabled = !redis.managed || redis.busy || !redis.up
    $('redis-start').disabled = !redis.managed || redis.busy || redis.up
    $('redis-message').textContent = redis.managed
      ? redis.message
      : redis.url
        ? 'REDIS_URL is set: this page does not stop a Redis it did not start'
        : 'redis-server is not installed: every route uses the local provider'
    if (state.bursts === undefined) return
    for (const [id, view] of Object.entries(dashboard.routes)) {
      const burst = state.bursts[id]
      const status = view.card.querySelector('.burst-status')
      status.classList.toggle('running', burst !== undefined)
      status.textContent = burst ? `burst running: ${burst.rps} req/s (${burst.multiple}×), ${burst.secondsLeft} s left` : ''
      view.card.dataset.burst = burst ? 'running' : ''
      const policy = state.policies[id]
      if (policy) view.card.querySelector('.policy-header').textContent = policy
    }
  }

  function startBurst(routeId, multiple) {
    post('/demo/burst', { route: routeId, multiple, seconds: 20 }).then(
      (burst) => {
        const view = dashboard.routes[routeId]
        if (view) view.card.querySelector('.burst-status').textContent = `burst starting: ${burst.rps} req/s`
      },
      (error) => alert(`burst failed: ${error.message}`),
    )
  }

  function switchRedis(action) {
    $('redis-stop').disabled = true
    $('redis-start').disabled = true
    $('redis-badge').textContent = '…'
    post(`/demo/redis/${action}`).then(
      (data) => showState({ redis: data.redis }),
      (error) => {
        $('redis-message').textContent = error.message
      },
    )
  }

  function onSnapshot({ config: next, history, state }) {
    if (config === null) {
      config = next
      dashboard.config = config
      outcomeIndex = Object.fromEntries(config.outcomes.map((name, i) => [name, i]))
      $('summary').textContent =
        `provider ${config.provider} · window ${config.windowSeconds} s · hard limit factor ${config.hardLimitFactor} · ` +
        `${config.routes.length} limited routes`
      for (const route of config.routes) buildRoute(route)
      startFromQuery()
    }
    for (const view of Object.values(dashboard.routes)) view.columns = view.columns.map(() => [])
    downSeconds = new Set()
    for (const entry of history) addEntry(entry)
    showState(state)
    redraw()
    dashboard.ready = true
    document.body.dataset.ready = 'true'
  }

  /** `/?burst=hello` (optionally `&multiple=3`) starts a burst when the page opens. */
  function startFromQuery() {
    const params = new URLSearchParams(location.search)
    const route = params.get('burst')
    if (!route) return
    startBurst(route, Number(params.get('multiple') || 10))
    history.replaceState(null, '', location.pathname)
  }

  function connect() {
    const events = new EventSource('/demo/events')
    events.addEventListener('snapshot', (event) => onSnapshot(JSON.parse(event.data)))
    events.addEventListener('tick', (event) => {
      if (config === null) return
      const { entry, state } = JSON.parse(event.data)
      dashboard.ticks++
      addEntry(entry)
      showState(state)
      redraw()
    })
    events.addEventListener('state', (event) => {
      if (config !== null) showState(JSON.parse(event.data))
    })
    events.onopen = () => {
      $('connection').textContent = ''
    }
    events.onerror = () => {
      $('connection').textContent = '(connection to the server lost; retrying…)'
    }
  }

  $('redis-stop').addEventListener('click', () => switchRedis('stop'))
  $('redis-start').addEventListener('click', () => switchRedis('start'))
  window.addEventListener('resize', () => {
    for (const [id, view] of Object.entries(dashboard.routes)) {
      dashboard.charts[id].setSize({ width: chartWidth(view.card), height: 230 })
    }
  })
  connect()
})()
