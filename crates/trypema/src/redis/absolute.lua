-- Absolute strategy for one entity, atomically: drop the buckets that left the window, then
-- check (mode "check") or try to record ARGV[5] (mode "inc").
--
-- KEYS[1]  the entity's hash. Header fields: c capacity (sticky), t total in window,
--          o / n oldest / newest bucket index, os / ns their start (ms), nk the newest
--          bucket's count. Bucket i: s<i> start, k<i> count; the newest bucket's count lives
--          in nk instead, so the common path (joining the newest bucket) writes one HSET.
-- ARGV     mode, window_ms, group_ms, capacity for a new key, count
-- Returns  {0, 0, 0} allowed, {1, retry_after_ms, remaining_after_waiting} rejected.
--
-- The key's TTL always ends when its newest bucket leaves the window, so idle state expires
-- by itself; it is only renewed when a bucket is opened.
local key = KEYS[1]
local window_ms = tonumber(ARGV[2])

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local h = redis.call('HMGET', key, 'c', 't', 'o', 'n', 'os', 'ns', 'nk')
local capacity = tonumber(h[1])
local total, oldest, newest, oldest_start, newest_start, newest_count
local changes = {}

if capacity then
  total, oldest, newest = tonumber(h[2]), tonumber(h[3]), tonumber(h[4])
  oldest_start, newest_start, newest_count = tonumber(h[5]), tonumber(h[6]), tonumber(h[7])
  if now - newest_start > window_ms then
    -- Every bucket has left the window (the TTL normally removes the key first).
    redis.call('DEL', key)
    capacity = nil
  elseif now - oldest_start > window_ms then
    repeat
      local bucket = redis.call('HMGET', key, 'k' .. oldest, 's' .. (oldest + 1))
      total = total - tonumber(bucket[1])
      redis.call('HDEL', key, 'k' .. oldest, 's' .. oldest)
      oldest = oldest + 1
      oldest_start = tonumber(bucket[2])
    until now - oldest_start <= window_ms
    changes = {'t', total, 'o', oldest, 'os', oldest_start}
  end
end

local function rejected()
  if #changes > 0 then
    redis.call('HSET', key, unpack(changes))
  end
  local oldest_count = newest_count
  if oldest < newest then
    oldest_count = tonumber(redis.call('HGET', key, 'k' .. oldest))
  end
  return {1, oldest_start + window_ms + 1 - now, total - oldest_count}
end

if ARGV[1] == 'check' then
  if capacity == nil or total < capacity then
    if #changes > 0 then
      redis.call('HSET', key, unpack(changes))
    end
    return {0, 0, 0}
  end
  return rejected()
end

local count = tonumber(ARGV[5])
if capacity == nil then
  capacity = tonumber(ARGV[4])
  if count > capacity then
    return {1, window_ms, 0}
  end
  redis.call('HSET', key, 'c', capacity, 't', count, 'o', 1, 'n', 1,
    'os', now, 'ns', now, 'nk', count, 's1', now)
  redis.call('PEXPIRE', key, window_ms + 1)
  return {0, 0, 0}
end

if total + count > capacity then
  return rejected()
end

total = total + count
if now - newest_start < tonumber(ARGV[3]) then
  redis.call('HSET', key, 't', total, 'nk', newest_count + count, 'o', oldest, 'os', oldest_start)
else
  local opened = newest + 1
  redis.call('HSET', key, 't', total, 'o', oldest, 'os', oldest_start, 'k' .. newest, newest_count,
    'n', opened, 'ns', now, 'nk', count, 's' .. opened, now)
  redis.call('PEXPIRE', key, window_ms + 1)
end
return {0, 0, 0}
