-- Suppressed strategy for one entity, atomically: drop the buckets that left the window, then
-- record ARGV[5] as observed and decide (mode "inc"), or report the factor (mode "factor").
--
-- KEYS[1]  the entity's hash. Header fields: r rate (sticky), to / td observed / declined in
--          the window, o / n oldest / newest bucket index, os / ns their start (ms),
--          no / nd the newest bucket's observed / declined, l the oldest bucket that started
--          within the last second, ls its start, lo what buckets l..n observed.
--          Bucket i: s<i> start, b<i> observed, x<i> declined (the newest's live in no / nd).
--          Keeping the last second's sum incrementally makes every call O(1) amortised.
-- ARGV     mode, window_ms, group_ms, rate for a new key, count, hard_limit_factor, random
--          number in [0, 1) drawn by the client
-- Returns  {0, 1, "0"} allowed, {1, is_allowed, factor} suppressed, {2, 0, factor} for "factor".
local key = KEYS[1]
local window_ms = tonumber(ARGV[2])

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local h = redis.call('HMGET', key, 'r', 'to', 'td', 'o', 'n', 'os', 'ns', 'no', 'nd', 'l', 'ls', 'lo')
local rate = tonumber(h[1])
local observed, declined, oldest, newest, oldest_start, newest_start
local newest_observed, newest_declined, recent, recent_start, recent_observed

if rate then
  observed, declined = tonumber(h[2]), tonumber(h[3])
  oldest, newest, oldest_start, newest_start = tonumber(h[4]), tonumber(h[5]), tonumber(h[6]), tonumber(h[7])
  newest_observed, newest_declined = tonumber(h[8]), tonumber(h[9])
  recent, recent_start, recent_observed = tonumber(h[10]), tonumber(h[11]), tonumber(h[12])
  if now - newest_start > window_ms then
    -- Every bucket has left the window (the TTL normally removes the key first).
    redis.call('DEL', key)
    rate = nil
  else
    -- Before the window eviction below, which deletes the fields this loop reads.
    while recent <= newest and now - recent_start >= 1000 do
      if recent == newest then
        recent_observed = 0
      else
        local bucket = redis.call('HMGET', key, 'b' .. recent, 's' .. (recent + 1))
        recent_observed = recent_observed - tonumber(bucket[1])
        recent_start = tonumber(bucket[2])
      end
      recent = recent + 1
    end
    while now - oldest_start > window_ms do
      local bucket = redis.call('HMGET', key, 'b' .. oldest, 'x' .. oldest, 's' .. (oldest + 1))
      observed = observed - tonumber(bucket[1])
      declined = declined - tonumber(bucket[2])
      redis.call('HDEL', key, 'b' .. oldest, 'x' .. oldest, 's' .. oldest)
      oldest = oldest + 1
      oldest_start = tonumber(bucket[3])
    end
  end
end

local window_seconds = window_ms / 1000

-- The factor a call sees when `accepted` calls are admitted: 0 below the soft capacity,
-- 1 at the hard ceiling, else 1 - rate / perceived rate.
local function factor(accepted)
  local soft = window_seconds * rate
  if accepted < soft then
    return 0
  end
  if accepted >= soft * tonumber(ARGV[6]) then
    return 1
  end
  local perceived = math.max(observed / window_seconds, recent_observed)
  if perceived <= 0 then
    return 0
  end
  return math.min(1, math.max(0, 1 - rate / perceived))
end

local function save()
  redis.call('HSET', key, 'to', observed, 'td', declined, 'o', oldest, 'os', oldest_start,
    'no', newest_observed, 'nd', newest_declined, 'l', recent, 'ls', recent_start, 'lo', recent_observed)
end

if ARGV[1] == 'factor' then
  if rate == nil then
    return {2, 0, '0'}
  end
  save()
  return {2, 0, tostring(factor(observed - declined))}
end

local count = tonumber(ARGV[5])
local opened = false
if rate == nil then
  rate = tonumber(ARGV[4])
  observed, declined, oldest, newest, oldest_start = 0, 0, 1, 0, now
  recent, recent_observed = 1, 0
end

local accepted = observed - declined
observed = observed + count
if newest >= oldest and now - newest_start < tonumber(ARGV[3]) then
  newest_observed = newest_observed + count
  if recent <= newest then
    recent_observed = recent_observed + count
  end
else
  if newest >= oldest then
    redis.call('HSET', key, 'b' .. newest, newest_observed, 'x' .. newest, newest_declined)
  end
  newest = newest + 1
  newest_start, newest_observed, newest_declined = now, count, 0
  if recent >= newest then
    recent, recent_start, recent_observed = newest, now, 0
  end
  recent_observed = recent_observed + count
  opened = true
end

local result
local soft = window_seconds * rate
if accepted + count <= soft then
  result = {0, 1, '0'}
else
  local f
  local admitted
  if accepted + count > soft * tonumber(ARGV[6]) then
    -- Admitting this call would break the hard ceiling, whatever the factor says.
    f, admitted = 1, false
  else
    f = factor(accepted)
    admitted = tonumber(ARGV[7]) >= f
  end
  if not admitted then
    declined = declined + count
    newest_declined = newest_declined + count
  end
  result = {1, admitted and 1 or 0, tostring(f)}
end

save()
if opened then
  redis.call('HSET', key, 'r', rate, 'n', newest, 'ns', newest_start, 's' .. newest, newest_start)
  redis.call('PEXPIRE', key, window_ms + 1)
end
return result
