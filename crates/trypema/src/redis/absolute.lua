-- Absolute strategy for one entity, atomically: drop the buckets that left the window, then
-- check (mode "check") or try to record ARGV[5] (mode "inc").
--
-- KEYS[1]  header, a string packing: capacity (sticky), total in window, number of live
--          buckets, oldest bucket start and count, newest bucket start and count.
-- KEYS[2]  list of the buckets between the oldest and the newest, each packed start and count.
-- ARGV     mode, window_ms, group_ms, capacity for a new key, count, now (Redis server time in
--          ms, as tracked by the client: calling TIME here would add a third of the cost)
-- Returns  -1 allowed, or {retry_after_ms, remaining_after_waiting} rejected.
--
-- Server time here is dominated by the number of redis.call()s and of numbers converted to
-- text, so the header is one binary string: joining the newest bucket (the common path) is
-- one GET and one SETRANGE, with no conversions. Buckets only move through the list when one is
-- opened or evicted. Both keys expire when the newest bucket leaves the window, so idle state
-- goes away by itself.
local HEADER = '<ddddddd'
local BUCKET = '<dd'
local header_key, buckets_key = KEYS[1], KEYS[2]
local window_ms = tonumber(ARGV[2])
local checking = ARGV[1] == 'check'

local now = tonumber(ARGV[6])

local packed = redis.call('GET', header_key)
local capacity, total, buckets, oldest_start, oldest_count, newest_start, newest_count
if packed then
  capacity, total, buckets, oldest_start, oldest_count, newest_start, newest_count =
    struct.unpack(HEADER, packed)
  if now - newest_start > window_ms then
    -- Every bucket has left the window (the TTL normally removes the keys first).
    redis.call('DEL', header_key, buckets_key)
    capacity = nil
  end
end

if not capacity then
  if checking then
    return -1
  end
  capacity = tonumber(ARGV[4])
  local count = tonumber(ARGV[5])
  if count > capacity then
    return {window_ms, 0}
  end
  redis.call('SET', header_key, struct.pack(HEADER, capacity, count, 1, now, count, now, count),
    'PX', window_ms + 1)
  return -1
end

local changed = false
while buckets > 1 and now - oldest_start > window_ms do
  total = total - oldest_count
  buckets = buckets - 1
  if buckets == 1 then
    oldest_start, oldest_count = newest_start, newest_count
  else
    oldest_start, oldest_count = struct.unpack(BUCKET, redis.call('LPOP', buckets_key))
  end
  changed = true
end

local count = checking and 1 or tonumber(ARGV[5])
local ttl = 'KEEPTTL'
if total + count > capacity then
  count = nil
elseif not checking then
  changed = true
  total = total + count
  if now - newest_start < tonumber(ARGV[3]) then
    newest_count = newest_count + count
  else
    if buckets > 1 then
      redis.call('RPUSH', buckets_key, struct.pack(BUCKET, newest_start, newest_count))
      redis.call('PEXPIRE', buckets_key, window_ms + 1)
    end
    buckets = buckets + 1
    newest_start, newest_count = now, count
    ttl = 'PX'
  end
  if buckets == 1 then
    oldest_start, oldest_count = newest_start, newest_count
  end
end

if changed then
  local header = struct.pack(HEADER, capacity, total, buckets, oldest_start, oldest_count,
    newest_start, newest_count)
  if ttl == 'PX' then
    redis.call('SET', header_key, header, 'PX', window_ms + 1)
  else
    -- Same length, written in place: cheaper than SET and keeps the TTL.
    redis.call('SETRANGE', header_key, '0', header)
  end
end
if count == nil then
  return {oldest_start + window_ms + 1 - now, total - oldest_count}
end
return -1
