-- Suppressed strategy for one entity, atomically: drop the buckets that left the window, then
--   inc (1)     record `count` as observed and decide,
--   factor (2)  report the factor,
--   sync (3)    (hybrid provider) record `count` observed and `declined` declined, decided
--               elsewhere, and report the window's totals.
--
-- KEYS[1]  header, a string packing: rate (sticky), observed and declined in the window,
--          number of live buckets, the oldest and the newest bucket (start, observed,
--          declined each), and the "last second" cursor: position of the oldest bucket that
--          started less than a second ago (0 = oldest, buckets = none), its start, its
--          observed count, and what the buckets from it to the newest observed.
-- KEYS[2]  list of the buckets between the oldest and the newest, each packed start, observed,
--          declined.
-- ARGV[1]  eight little-endian doubles: mode, now (Redis server time in ms, as tracked by
--          the client), window_ms, group_ms, rate for a new key, count, hard_limit_factor, and
--          a random number in [0, 1) drawn by the client (Lua's math.random is seeded the same
--          on every run) or, for sync, the declined count.
-- Returns  -1 allowed; otherwise floor(factor * 2^40) * 2 + admitted (1 or 0), a whole
--          number so that no float is formatted as text. "sync": {observed, declined, observed
--          in the last second, rate * 2^20 (rounded down)}.
--
-- Like the absolute script, the common path is one GET and one SETRANGE; the cursor keeps the
-- last second's count incrementally, so no call scans the buckets.
local HEADER = '<dddddddddddddd'
local BUCKET = '<ddd'
local header_key, buckets_key = KEYS[1], KEYS[2]
local INC, FACTOR, SYNC = 1, 2, 3
local mode, now, window_ms, group_ms, new_rate, count, hard_limit_factor, random_or_declined =
  struct.unpack('<dddddddd', ARGV[1])
local window_seconds = window_ms / 1000


local packed = redis.call('GET', header_key)
local rate, observed, declined, buckets
local oldest_start, oldest_observed, oldest_declined
local newest_start, newest_observed, newest_declined
local recent, recent_start, recent_first, recent_observed
if packed then
  rate, observed, declined, buckets, oldest_start, oldest_observed, oldest_declined,
    newest_start, newest_observed, newest_declined, recent, recent_start, recent_first,
    recent_observed = struct.unpack(HEADER, packed)
  if now - newest_start > window_ms then
    -- Every bucket has left the window (the TTL normally removes the keys first).
    redis.call('DEL', header_key, buckets_key)
    rate = nil
  end
end

if not rate then
  if mode == FACTOR then
    return 0
  end
  if mode == SYNC and count == 0 and random_or_declined == 0 then
    return {0, 0, 0, 0}
  end
  rate, observed, declined, buckets = new_rate, 0, 0, 0
  recent, recent_start, recent_first, recent_observed = 0, now, 0, 0
  newest_start = now
end

local changed = false
-- Move the cursor past buckets that are now a second old. This runs before the eviction
-- below, which pops the list items the cursor may still need to read.
while recent < buckets and now - recent_start >= 1000 do
  local first = recent_first
  if recent == buckets - 1 then
    first = newest_observed
  end
  recent_observed = recent_observed - first
  recent = recent + 1
  if recent == buckets - 1 then
    recent_start, recent_first = newest_start, newest_observed
  elseif recent < buckets then
    recent_start, recent_first = struct.unpack(BUCKET, redis.call('LINDEX', buckets_key, recent - buckets + 1))
  end
  changed = true
end

while buckets > 1 and now - oldest_start > window_ms do
  observed = observed - oldest_observed
  declined = declined - oldest_declined
  buckets = buckets - 1
  recent = recent - 1
  if buckets == 1 then
    -- Only the newest bucket is left: it is the oldest too (a bucket opened below must not
    -- find the evicted one here).
    oldest_start, oldest_observed, oldest_declined = newest_start, newest_observed, newest_declined
  else
    oldest_start, oldest_observed, oldest_declined = struct.unpack(BUCKET, redis.call('LPOP', buckets_key))
  end
  changed = true
end

local soft = window_seconds * rate
local hard = soft * hard_limit_factor

-- The factor a call sees when `accepted` calls are admitted in the window.
local function factor(accepted)
  if accepted < soft then
    return 0
  end
  if accepted >= hard then
    return 1
  end
  local perceived = math.max(observed / window_seconds, recent_observed)
  return math.min(1, math.max(0, 1 - rate / perceived))
end

local result = -1
local ttl = 'KEEPTTL'
if mode ~= FACTOR then
  local accepted = observed - declined
  observed = observed + count
  if buckets > 0 and now - newest_start < group_ms then
    newest_observed = newest_observed + count
    if recent < buckets then
      recent_observed = recent_observed + count
    end
  else
    if buckets > 1 then
      redis.call('RPUSH', buckets_key, struct.pack(BUCKET, newest_start, newest_observed, newest_declined))
      redis.call('PEXPIRE', buckets_key, window_ms + 1)
    end
    if recent == buckets - 1 then
      recent_first = newest_observed
    end
    if recent == buckets then
      recent_start, recent_observed = now, 0
    end
    buckets = buckets + 1
    newest_start, newest_observed, newest_declined = now, count, 0
    recent_observed = recent_observed + count
    ttl = 'PX'
  end
  if mode == SYNC then
    local declined_here = random_or_declined
    declined = declined + declined_here
    newest_declined = newest_declined + declined_here
    result = {observed, declined, recent_observed, math.floor(rate * 2 ^ 20)}
  elseif accepted + count > soft then
    local f, admitted = 1, false
    -- Admitting past the hard ceiling is never allowed, whatever the factor says.
    if accepted + count <= hard then
      f = factor(accepted)
      admitted = random_or_declined >= f
    end
    if not admitted then
      declined = declined + count
      newest_declined = newest_declined + count
    end
    result = math.floor(f * 2 ^ 40) * 2 + (admitted and 1 or 0)
  end
  changed = true
else
  result = math.floor(factor(observed - declined) * 2 ^ 40) * 2
end

if changed then
  if buckets == 1 then
    oldest_start, oldest_observed, oldest_declined = newest_start, newest_observed, newest_declined
  end
  local header = struct.pack(HEADER, rate, observed, declined, buckets, oldest_start,
    oldest_observed, oldest_declined, newest_start, newest_observed, newest_declined, recent,
    recent_start, recent_first, recent_observed)
  if ttl == 'PX' then
    redis.call('SET', header_key, header, 'PX', window_ms + 1)
  else
    -- Same length, written in place: cheaper than SET and keeps the TTL.
    redis.call('SETRANGE', header_key, '0', header)
  end
end
return result
