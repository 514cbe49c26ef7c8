-- The sliding window both strategies keep in Redis, shared by absolute.lua and suppressed.lua
-- (each script is this file followed by the strategy's own code).
--
-- An entity is ONE string key, so losing part of its state is impossible: eviction, DEL or
-- FLUSHALL remove all of it or nothing. The string is a fixed header of little-endian doubles
-- followed by an array of buckets:
--
--   header  magic, clock, epoch, param, n, head, sums[1..K], oldest[1..F], newest[1..F], extra[1..E]
--   array   buckets strictly between the oldest and the newest, F doubles each, at positions
--           head .. head + n - 3 (byte offset = header length + position * bucket length)
--
-- A bucket is {start, counter_1 .. counter_K}; `sums` are the counters over the window. `clock`
-- is the latest server time this entity has seen, so a server clock stepping back never moves
-- its window backwards. `epoch` identifies this incarnation of the entity: leases name it when
-- they are given back, so a give-back never lands in state created after a DEL or expiry.
-- `param` is the sticky capacity (absolute) or rate (suppressed).
--
-- Work per call is bounded: the newest bucket lives in the header (the common path is one
-- GETRANGE and one SETRANGE), buckets are read from the array in chunks, and the number of
-- buckets is capped (the client also coalesces more coarsely when window / group exceeds it).
-- Positions only grow; the array is compacted to the front when its dead prefix is at least
-- as long as its live part, so memory stays within about twice the live buckets.

local MAGIC = 7340
-- Buckets per entity at most (the client also coalesces more coarsely when window / group
-- exceeds it).
local MAX_BUCKETS = 600
-- The array is compacted (rewritten from its live part) once its dead prefix is this long and
-- outweighs the live buckets: on saving, or earlier, at a shorter prefix, when a push would
-- otherwise grow it.
local COMPACT_AFTER, COMPACT_ON_PUSH_AFTER = 32, 16

-- Whether a change to `buckets` buckets (`n` before it) makes Window:push or Window:save
-- rewrite the array, which only the window code does.
local function rewrites_array(head, n, buckets)
  return (buckets > n and n >= 2 and head >= COMPACT_ON_PUSH_AFTER and head >= n - 2)
    or (head >= COMPACT_AFTER and head >= math.max(0, buckets - 2))
end

-- The window code, defined only when a call needs it. A script's top level runs on every call
-- and each function it defines costs a closure, so the top level defines little, and each
-- strategy answers its common call (an increment with nothing to evict, which joins the newest
-- bucket or opens one) from the header before calling this. That path must do exactly what
-- Window:evict, Window:add and Window:save would: tests/redis_fast_path.rs compares the two on
-- random calls.
local function window_library()
  local CHUNK = 32
  -- Eviction reads larger chunks: after a pause it walks many buckets in one call.
  local EVICT_CHUNK = 128


  local function copy(bucket)
    local out = {}
    for i = 1, #bucket do
      out[i] = bucket[i]
    end
    return out
  end

  local Window = {}
  Window.__index = Window

  -- Reads the entity at `key` (F doubles per bucket, E extra header fields). A key that holds
  -- something else (wrong type, another layout, truncated) is deleted and the entity starts
  -- afresh, rather than failing every call until it expires.
  function Window.open(key, F, E, now)
    local K = F - 1
    local fields = 6 + K + 2 * F + E
    local w = setmetatable({
      key = key, F = F, K = K, E = E,
      hfmt = '<' .. string.rep('d', fields), hlen = fields * 8,
      bfmt = '<' .. string.rep('d', F), blen = F * 8,
      n = 0, head = 0, exists = false, sum = {}, old = {}, new = {}, extra = {},
    }, Window)
    for j = 1, K do w.sum[j] = 0 end
    for j = 1, E do w.extra[j] = 0 end
    local raw = redis.pcall('GETRANGE', key, 0, w.hlen - 1)
    if type(raw) ~= 'string' then
      redis.call('DEL', key)
      raw = ''
    end
    if #raw == w.hlen then
      local v = { struct.unpack(w.hfmt, raw) }
      if v[1] == MAGIC + F and v[5] >= 1 then
        w.exists = true
        w.clock, w.epoch, w.param, w.n, w.head = v[2], v[3], v[4], v[5], v[6]
        local i = 7
        for j = 1, K do w.sum[j] = v[i]; i = i + 1 end
        for j = 1, F do w.old[j] = v[i]; i = i + 1 end
        for j = 1, F do w.new[j] = v[i]; i = i + 1 end
        for j = 1, E do w.extra[j] = v[i]; i = i + 1 end
      end
    end
    if not w.exists and #raw > 0 then
      redis.call('DEL', key)
    end
    if w.exists and w.clock > now then
      now = w.clock
    end
    w.now = now
    return w
  end

  -- Starts new state (the previous one, if any, has fully left the window).
  function Window:create(param, epoch)
    self.n, self.head, self.param, self.epoch = 0, 0, param, epoch
    self.sum, self.old, self.new, self.extra = {}, {}, {}, {}
    for j = 1, self.K do self.sum[j] = 0 end
    for j = 1, self.E do self.extra[j] = 0 end
    -- Written whole by save(), which also drops any array left by the previous state.
    self.rewrite = ''
    self.dirty = true
  end

  -- Buckets at array positions first .. first + count - 1, or nil when the data is not there.
  function Window:slots(first, count)
    local offset = self.hlen + first * self.blen
    local raw = redis.call('GETRANGE', self.key, offset, offset + count * self.blen - 1)
    if #raw ~= count * self.blen then
      return nil
    end
    local out, pos = {}, 1
    for i = 1, count do
      local b = { struct.unpack(self.bfmt, raw, pos) }
      pos = b[self.F + 1]
      b[self.F + 1] = nil
      out[i] = b
    end
    return out
  end

  function Window:write_slot(position, bucket)
    redis.call('SETRANGE', self.key, self.hlen + position * self.blen,
      struct.pack(self.bfmt, unpack(bucket)))
  end

  local function is_zero(bucket, K)
    for j = 2, K + 1 do
      if bucket[j] ~= 0 then
        return false
      end
    end
    return true
  end

  -- The buckets between the oldest and the newest could not be read (the key was altered):
  -- their counts are folded into the newest bucket, which keeps them counted at least as long
  -- as they would have been. Never an under-count.
  function Window:fold()
    for j = 1, self.K do
      self.new[j + 1] = self.sum[j]
    end
    self.n, self.head = 1, 0
    self.old = copy(self.new)
    self.rewrite = ''
    self.dirty = true
  end

  -- Reads the bucket at `pos` of a raw chunk into `into` (no table is allocated per bucket: eviction
  -- after a long pause reads hundreds of them). Returns the position after it.
  local function read_bucket(bfmt, F, raw, pos, into)
    if F == 2 then
      into[1], into[2], pos = struct.unpack(bfmt, raw, pos)
    else
      into[1], into[2], into[3], into[4], pos = struct.unpack(bfmt, raw, pos)
    end
    return pos
  end

  -- Drops the buckets that left the window, and empty buckets at the old end (they free
  -- nothing, so they must not be named in a retry hint).
  function Window:evict(window_ms)
    local now, K, F = self.now, self.K, self.F
    local raw, pos, left = nil, 1, 0
    -- Buckets read from the array go through one scratch table; only the one that stays the
    -- oldest is copied out.
    local scratch, reading = {}, false
    while self.n > 0 do
      local o = self.old
      if now - o[1] <= window_ms and not is_zero(o, K) then
        break
      end
      if self.n == 1 then
        self.n = 0
        self.dirty = true
        break
      end
      for j = 1, K do
        self.sum[j] = self.sum[j] - o[j + 1]
      end
      self.n = self.n - 1
      self.dirty = true
      if self.n == 1 then
        self.old = copy(self.new)
        self.head = 0
        -- The array is empty now: drop its bytes.
        self.rewrite = self.rewrite or ''
      else
        if left == 0 then
          local count = math.min(EVICT_CHUNK, self.n - 1)
          local offset = self.hlen + self.head * self.blen
          raw = redis.call('GETRANGE', self.key, offset, offset + count * self.blen - 1)
          if #raw ~= count * self.blen then
            self:fold()
            break
          end
          pos, left = 1, count
        end
        pos = read_bucket(self.bfmt, F, raw, pos, scratch)
        self.old = scratch
        reading = true
        left = left - 1
        self.head = self.head + 1
      end
    end
    if reading and self.old == scratch then
      self.old = copy(scratch)
    end
    for j = 1, K do
      if self.sum[j] < 0 then
        self.sum[j] = 0
      end
    end
  end

  -- Adds `deltas` (K numbers) at `start`: joins the newest bucket if it started less than
  -- `group_ms` earlier (with `exact`, only if it starts at exactly `start`), else opens a bucket.
  -- Starts never go backwards: a start before the newest one joins the newest, which counts the
  -- amount at least as long. At the bucket cap the newest bucket absorbs the amount and its start
  -- moves to `start` (later, so again counted at least as long).
  function Window:add(start, deltas, group_ms, exact)
    if self.n == 0 then
      self.n, self.head = 1, 0
      self.new = { start }
      for j = 1, self.K do
        self.new[j + 1] = deltas[j]
        self.sum[j] = deltas[j]
      end
      self.old = copy(self.new)
      self.rewrite = self.rewrite or ''
      self.dirty, self.ttl_dirty = true, true
      return
    end
    local nw = self.new
    if start < nw[1] then
      start = nw[1]
    end
    local gap = start - nw[1]
    local join = gap == 0 or (gap < group_ms and not exact)
    if not join and self.n >= MAX_BUCKETS then
      nw[1] = start
      self.ttl_dirty = true
      join = true
    end
    if not join then
      if self.n >= 2 then
        self:push(nw)
      end
      self.n = self.n + 1
      nw = { start }
      for j = 1, self.K do nw[j + 1] = 0 end
      self.new = nw
      self.ttl_dirty = true
    end
    for j = 1, self.K do
      nw[j + 1] = nw[j + 1] + deltas[j]
      self.sum[j] = self.sum[j] + deltas[j]
    end
    if self.n == 1 then
      self.old = copy(nw)
    end
    self.dirty = true
  end

  -- Appends the bucket that stops being the newest to the array.
  function Window:push(bucket)
    local items = self.n - 2
    local packed = struct.pack(self.bfmt, unpack(bucket))
    if self.rewrite then
      self.rewrite = self.rewrite .. packed
    elseif self.head >= COMPACT_ON_PUSH_AFTER and self.head >= items then
      local live = ''
      if items > 0 then
        local offset = self.hlen + self.head * self.blen
        live = redis.call('GETRANGE', self.key, offset, offset + items * self.blen - 1)
      end
      self.rewrite = live .. packed
      self.head = 0
    else
      redis.call('SETRANGE', self.key, self.hlen + (self.head + items) * self.blen, packed)
    end
  end

  -- Visits buckets newest first. `visit(bucket)` returns (changed, stop); changed array buckets
  -- are written back. Read in chunks; stops early when the array cannot be read.
  function Window:newest_first(visit)
    if self.n == 0 then
      return
    end
    local changed, stop = visit(self.new)
    if changed then self.dirty = true end
    if stop or self.n == 1 then
      if self.n == 1 then self.old = copy(self.new) end
      return
    end
    local last = self.head + self.n - 3
    while last >= self.head do
      local first = math.max(self.head, last - CHUNK + 1)
      local chunk = self:slots(first, last - first + 1)
      if chunk == nil then
        return
      end
      for i = #chunk, 1, -1 do
        changed, stop = visit(chunk[i])
        if changed then
          self:write_slot(first + i - 1, chunk[i])
          self.dirty = true
        end
        if stop then
          return
        end
      end
      last = first - 1
    end
    changed = visit(self.old)
    if changed then self.dirty = true end
  end

  -- The bucket that starts at `start`, searched newest first (a lease's bucket is young), with
  -- a function that stores a change made to it.
  function Window:find(start)
    local found, position
    if self.n == 0 then
      return nil
    end
    if self.new[1] == start then
      return self.new, function() self.dirty = true; if self.n == 1 then self.old = copy(self.new) end end
    end
    if self.n >= 2 and self.old[1] == start then
      return self.old, function() self.dirty = true end
    end
    local last = self.head + self.n - 3
    while last >= self.head and found == nil do
      local first = math.max(self.head, last - CHUNK + 1)
      local chunk = self:slots(first, last - first + 1)
      if chunk == nil then
        return nil
      end
      for i = #chunk, 1, -1 do
        if chunk[i][1] == start then
          found, position = chunk[i], first + i - 1
          break
        end
        if chunk[i][1] < start then
          return nil
        end
      end
      last = first - 1
    end
    if found == nil then
      return nil
    end
    return found, function() self:write_slot(position, found) end
  end

  -- Takes up to `amount` from counter `field` (2 .. F) of the bucket starting at `start`, if it
  -- belongs to this epoch. Returns what was taken.
  function Window:take_from(start, epoch, field, amount)
    if amount <= 0 or self.n == 0 or epoch ~= self.epoch then
      return 0
    end
    local bucket, store = self:find(start)
    if bucket == nil then
      return 0
    end
    local taken = math.min(amount, bucket[field])
    if taken > 0 then
      bucket[field] = bucket[field] - taken
      self.sum[field - 1] = self.sum[field - 1] - taken
      self.dirty = true
      store()
    end
    return taken
  end

  -- Milliseconds until the oldest bucket leaves the window (0 without state).
  function Window:reset_ms(window_ms)
    if self.n == 0 then
      return 0
    end
    return self.old[1] + window_ms + 1 - self.now
  end

  -- Writes what changed. The key expires when its newest bucket leaves the window.
  function Window:save(window_ms)
    if self.n == 0 then
      if self.exists then
        redis.call('DEL', self.key)
      end
      return
    end
    if not (self.dirty or self.ttl_dirty or self.rewrite) then
      return
    end
    if self.n == 1 then
      self.old = copy(self.new)
    end
    -- Give back the space of evicted buckets once it outweighs the live ones.
    local items = math.max(0, self.n - 2)
    if not self.rewrite and self.head >= COMPACT_AFTER and self.head >= items then
      local live = ''
      if items > 0 then
        local offset = self.hlen + self.head * self.blen
        live = redis.call('GETRANGE', self.key, offset, offset + items * self.blen - 1)
      end
      self.rewrite = live
      self.head = 0
    end
    local values = { MAGIC + self.F, self.now, self.epoch, self.param, self.n, self.head }
    for j = 1, self.K do values[#values + 1] = self.sum[j] end
    for j = 1, self.F do values[#values + 1] = self.old[j] end
    for j = 1, self.F do values[#values + 1] = self.new[j] end
    for j = 1, self.E do values[#values + 1] = self.extra[j] end
    local header = struct.pack(self.hfmt, unpack(values))
    local ttl = math.max(1, math.floor(self.new[1] + window_ms + 1 - self.now))
    if self.rewrite then
      redis.call('SET', self.key, header .. self.rewrite, 'PX', ttl)
    else
      redis.call('SETRANGE', self.key, 0, header)
      if self.ttl_dirty then
        redis.call('PEXPIRE', self.key, ttl)
      end
    end
  end

  -- Takes back up to `count` units of the first counter, newest bucket first; `takeable(bucket)`
  -- says how many of a bucket's units may be taken. Returns the amount taken back.
  function Window:take_back(count, takeable)
    local left = count
    self:newest_first(function(bucket)
      local taken = math.min(left, takeable(bucket))
      if taken <= 0 then
        return false, left <= 0
      end
      bucket[2] = bucket[2] - taken
      self.sum[1] = self.sum[1] - taken
      left = left - taken
      return true, left <= 0
    end)
    return count - left
  end

  -- Runs every command the scripts use once, on `key`, so that `build()` can tell a missing ACL
  -- permission from a working setup before the first real call.
  function Window.probe(key)
    redis.call('TIME')
    redis.call('SET', key, 'probe', 'PX', 1000)
    redis.call('SETRANGE', key, 0, 'p')
    redis.call('GETRANGE', key, 0, 0)
    redis.call('PEXPIRE', key, 1000)
    redis.call('DEL', key)
    return 1
  end

  return Window
end
