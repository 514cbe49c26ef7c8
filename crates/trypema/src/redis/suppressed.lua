-- Suppressed strategy for one entity, atomically (this file follows window.lua). Buckets are
-- {start, observed, declined, reserved}: every call's count is observed, declined counts are
-- those shed, and reserved is admission quota leased to hybrid instances and not yet reported
-- as used. What counts against the soft and hard capacities is accepted = observed - declined
-- + reserved. `param` is the sticky rate; the header's extra fields cache the shedding factor.
--
-- KEYS[1]  the entity's key, {<prefix>:<key>}:s
-- ARGV[1]  little-endian doubles: mode, window_ms, group_ms, rate for new state, count, epoch
--          for new state, hard_limit_factor, a random number in [0, 1) drawn by the client
--          (Lua's math.random is seeded the same on every run), factor cache ms; lease mode adds
--          lease_ms, need_min, need_total, extra, observed and declined to record, and two
--          give-backs {start, epoch, amount} of reserved quota.
--
-- Modes and replies:
--   inc (1)        -1 allowed outright, else floor(factor * 2^40) * 2 + admitted (a whole number:
--                  no float is formatted as text)
--   factor (2)     floor(factor * 2^40) * 2; records nothing
--   lease (3)      (hybrid) record what an instance observed and declined, give back reserved
--                  quota, and reserve admissions for callers waiting plus `extra` (at most half
--                  of what is left under the hard ceiling) in a bucket that starts when the
--                  lease ends. Reply: doubles granted, lease_start, epoch, observed, declined,
--                  reserved, observed in the last second, rate, reset_ms.
--   get (4)        doubles -1, soft capacity, remaining, reset_ms; records nothing
--   refund (5)     take back up to `count` admitted units, newest first; reply as get with the
--                  amount refunded first
--   inc_quota (6)  inc, replying doubles decision (as inc), soft capacity, remaining, reset_ms
local INC, FACTOR, LEASE, GET, REFUND, INC_QUOTA, PROBE = 1, 2, 3, 4, 5, 6, 7
local ARGS = ARGV[1]
if struct.unpack('<d', ARGS) == PROBE then
  return window_library().probe(KEYS[1])
end
local mode, window_ms, group_ms, new_rate, count, new_epoch, hard_limit_factor, random, cache_ms =
  struct.unpack('<ddddddddd', ARGS)
local window_seconds = window_ms / 1000
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- The common call, answered from the header alone (see window_library). Header: magic, clock,
-- epoch, rate, buckets, head, totals {observed, declined, reserved}, oldest and newest buckets
-- {start, observed, declined, reserved}, cached factor and until when it holds.
if (mode == INC or mode == INC_QUOTA) and count > 0 then
  local raw = redis.pcall('GETRANGE', KEYS[1], '0', '151')
  if type(raw) == 'string' and #raw == 152 then
    local magic, clock, epoch, rate, n, head, observed, declined, reserved,
      old_start, old_observed, old_declined, old_reserved,
      new_start, new_observed, new_declined, new_reserved,
      cached_factor, cached_until = struct.unpack('<ddddddddddddddddddd', raw)
    now = math.max(now, clock)
    local soft = window_seconds * rate
    local hard = soft * hard_limit_factor
    local before = observed - declined + reserved
    local over_soft = before + count > soft
    -- The factor is known without reading the buckets (else factor() below computes it).
    local factor_known = not over_soft or before + count > hard or before < soft
      or now < cached_until
    local gap = math.max(now, new_start) - new_start
    local join = gap == 0 or gap < group_ms
    local buckets = join and n or n + 1
    -- Nothing to evict (the oldest bucket is in the window and not empty), and the change
    -- fits the header and the end of the array.
    if magic == MAGIC + 4 and n >= 1 and factor_known and now - old_start <= window_ms
      and (old_observed ~= 0 or old_declined ~= 0 or old_reserved ~= 0)
      and buckets <= MAX_BUCKETS and not rewrites_array(head, n, buckets) then
      local result, declining = -1, 0
      if over_soft then
        local f, admitted = 1, false
        if before + count <= hard then
          f = before < soft and 0 or cached_factor
          admitted = random >= f
        end
        if not admitted then
          declining = count
        end
        result = math.floor(f * 2 ^ 40) * 2 + (admitted and 1 or 0)
      end
      observed, declined = observed + count, declined + declining
      if join then
        new_observed, new_declined = new_observed + count, new_declined + declining
        if n == 1 then
          old_observed, old_declined = new_observed, new_declined
        end
      else
        if n >= 2 then
          -- The newest bucket moves to the end of the array.
          redis.call('SETRANGE', KEYS[1], 152 + (head + n - 2) * 32,
            struct.pack('<dddd', new_start, new_observed, new_declined, new_reserved))
        end
        new_start, new_observed, new_declined, new_reserved = now, count, declining, 0
      end
      redis.call('SETRANGE', KEYS[1], '0', struct.pack('<ddddddddddddddddddd', magic, now, epoch,
        rate, buckets, head, observed, declined, reserved, old_start, old_observed, old_declined,
        old_reserved, new_start, new_observed, new_declined, new_reserved, cached_factor,
        cached_until))
      if not join then
        redis.call('PEXPIRE', KEYS[1], math.max(1, math.floor(window_ms + 1)))
      end
      if mode == INC_QUOTA then
        return struct.pack('<dddd', result, soft,
          math.max(0, math.floor(soft - (observed - declined + reserved))),
          old_start + window_ms + 1 - now)
      end
      return result
    end
  end
end

local Window = window_library()
local w = Window.open(KEYS[1], 4, 2, now)
w:evict(window_ms)
local now = w.now
local rate = w.n > 0 and w.param or new_rate
local soft = window_seconds * rate
local hard = soft * hard_limit_factor

local function accepted()
  if w.n == 0 then
    return 0
  end
  return w.sum[1] - w.sum[2] + w.sum[3]
end

-- What buckets that started less than a second ago observed.
local function last_second()
  local recent = 0
  w:newest_first(function(bucket)
    if now - bucket[1] >= 1000 then
      return false, true
    end
    recent = recent + bucket[2]
    return false, false
  end)
  return recent
end

-- The factor a call sees when `admitted` units are accepted in the window.
local function factor(admitted)
  if admitted < soft then
    return 0
  end
  if admitted >= hard then
    return 1
  end
  if now < w.extra[2] then
    return w.extra[1]
  end
  local perceived = math.max(w.sum[1] / window_seconds, last_second())
  local f = 0
  if perceived > 0 then
    f = math.min(1, math.max(0, 1 - rate / perceived))
  end
  w.extra[1], w.extra[2] = f, now + cache_ms
  w.dirty = true
  return f
end

local function quota(first)
  return struct.pack('<dddd', first, soft, math.max(0, math.floor(soft - accepted())),
    w:reset_ms(window_ms))
end

if mode == INC or mode == INC_QUOTA then
  local result = -1
  local before = accepted()
  if count > 0 then
    if w.n == 0 then
      w:create(new_rate, new_epoch)
    end
    w:add(now, { count, 0, 0 }, group_ms, false)
  end
  if before + count > soft then
    local f, admitted = 1, false
    -- Admitting past the hard ceiling is never allowed, whatever the factor says.
    if before + count <= hard then
      f = w.n > 0 and factor(before) or 0
      admitted = random >= f
    end
    if not admitted and count > 0 then
      w.new[3] = w.new[3] + count
      w.sum[2] = w.sum[2] + count
      if w.n == 1 then w.old[3] = w.new[3] end
    end
    result = math.floor(f * 2 ^ 40) * 2 + (admitted and 1 or 0)
  end
  w:save(window_ms)
  if mode == INC_QUOTA then
    return quota(result)
  end
  return result
end

if mode == FACTOR then
  if w.n == 0 then
    return 0
  end
  local result = math.floor(factor(accepted()) * 2 ^ 40) * 2
  w:save(window_ms)
  return result
end

if mode == GET then
  w:save(window_ms)
  return quota(-1)
end

if mode == REFUND then
  -- Only admitted units (observed and not declined) can be taken back.
  local refunded = w:take_back(count, function(bucket)
    return bucket[2] - bucket[3]
  end)
  w:evict(window_ms)
  w:save(window_ms)
  return quota(refunded)
end

-- LEASE
local lease_ms, need_min, need_total, extra, observed, declined, start_1, epoch_1, amount_1,
  start_2, epoch_2, amount_2 = struct.unpack('<dddddddddddd', ARGS, 73)
w:take_from(start_1, epoch_1, 4, amount_1)
w:take_from(start_2, epoch_2, 4, amount_2)
w:evict(window_ms)
if w.n == 0 then
  rate, soft, hard = new_rate, window_seconds * new_rate, window_seconds * new_rate * hard_limit_factor
end
if observed > 0 then
  if w.n == 0 then
    w:create(new_rate, new_epoch)
  end
  w:add(now, { observed, declined, 0 }, group_ms, false)
end
local available = math.max(0, math.floor(hard - accepted()))
local granted = 0
if need_min <= available and (need_total > 0 or extra > 0) then
  granted = math.min(need_total, available)
  granted = granted + math.min(extra, math.floor((available - granted) / 2))
end
local lease_start = now + lease_ms
if granted > 0 then
  if w.n == 0 then
    w:create(new_rate, new_epoch)
  end
  w:add(lease_start, { 0, 0, granted }, group_ms, true)
  lease_start = w.new[1]
end
local recent = last_second()
w:save(window_ms)
if w.n == 0 then
  return struct.pack('<ddddddddd', 0, lease_start, 0, 0, 0, 0, 0, rate, 0)
end
return struct.pack('<ddddddddd', granted, lease_start, w.epoch, w.sum[1], w.sum[2], w.sum[3],
  recent, rate, w:reset_ms(window_ms))
