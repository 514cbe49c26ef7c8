-- Absolute strategy for one entity, atomically: drop the buckets that left the window, then
--   inc (1)    try to record `count` at now,
--   check (2)  report whether one more would fit, recording nothing,
--   lease (3)  (hybrid provider) give back the unused part of a previous lease, then reserve up
--              to `count` for a lease that ends `lease_ms` from now.
--
-- KEYS[1]  header, a string packing: capacity (sticky), total in window, number of live
--          buckets, oldest bucket start and count, newest bucket start and count.
-- KEYS[2]  list of the buckets between the oldest and the newest, each packed start and count.
-- ARGV[1]  nine little-endian doubles: mode, now (Redis server time in ms, as tracked by the
--          client: calling TIME here would add a third of the cost), window_ms, group_ms,
--          capacity for a new key, count, and for a lease: lease_ms, returned, returned_start.
--          One packed argument instead of nine saves Redis a microsecond per call.
-- Returns  inc / check: -1 allowed, or {retry_after_ms, remaining_after_waiting} rejected.
--          lease: {granted, lease bucket start, retry_after_ms, remaining_after_waiting}.
--
-- Server time here is dominated by the number of redis.call()s and of numbers converted to
-- text, so the header is one binary string: joining the newest bucket (the common path) is
-- one GET and one SETRANGE, with no conversions. Buckets only move through the list when one
-- is opened or evicted. Both keys expire when the newest bucket leaves the window, so idle
-- state goes away by itself.
--
-- A lease is recorded in a bucket that starts when the lease ends: everything admitted under
-- it happens before that, so it stays counted for at least a full window after each admission
-- and the window never holds more than the capacity, leases included.
local HEADER = '<ddddddd'
local BUCKET = '<dd'
local header_key, buckets_key = KEYS[1], KEYS[2]
local INC, CHECK, LEASE = 1, 2, 3
local mode, now, window_ms, group_ms, new_capacity, asked, lease_ms, to_return, returned_start =
  struct.unpack('<ddddddddd', ARGV[1])

local capacity, total, buckets, oldest_start, oldest_count, newest_start, newest_count
local packed = redis.call('GET', header_key)
if packed then
  capacity, total, buckets, oldest_start, oldest_count, newest_start, newest_count =
    struct.unpack(HEADER, packed)
  if now - newest_start > window_ms then
    -- Every bucket has left the window (the TTL normally removes the keys first).
    redis.call('DEL', header_key, buckets_key)
    packed = false
  end
end
if not packed then
  if mode == CHECK then
    return -1
  end
  if mode == LEASE and asked == 0 then
    return {0, now, window_ms, 0}
  end
  capacity, total, buckets = new_capacity, 0, 0
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

local count, start
if mode == LEASE then
  local returned = to_return
  if returned > 0 and buckets > 0 then
    if returned_start == newest_start then
      returned = math.min(returned, newest_count)
      newest_count = newest_count - returned
      if buckets == 1 then
        -- The only bucket is the oldest too; a bucket opened below must find it up to date.
        oldest_count = newest_count
      end
    elseif buckets > 1 and returned_start == oldest_start then
      returned = math.min(returned, oldest_count)
      oldest_count = oldest_count - returned
    else
      -- A lease's bucket is young, so it is near the tail when it is not the newest.
      returned = 0
      for i = -1, -8, -1 do
        local item = redis.call('LINDEX', buckets_key, i)
        if not item then
          break
        end
        local item_start, item_count = struct.unpack(BUCKET, item)
        if item_start == returned_start then
          returned = math.min(to_return, item_count)
          redis.call('LSET', buckets_key, i, struct.pack(BUCKET, item_start, item_count - returned))
          break
        end
        if item_start < returned_start then
          break
        end
      end
    end
    total = total - returned
    changed = changed or returned > 0
  end
  count = math.max(0, math.min(asked, capacity - total))
  start = now + lease_ms
else
  count = mode == CHECK and 1 or asked
  start = now
  if total + count > capacity or mode == CHECK then
    if changed then
      redis.call('SETRANGE', header_key, '0', struct.pack(HEADER, capacity, total, buckets,
        oldest_start, oldest_count, newest_start, newest_count))
    end
    if total + count <= capacity then
      return -1
    end
    if buckets == 0 then
      return {window_ms, 0}
    end
    return {oldest_start + window_ms + 1 - now, total - oldest_count}
  end
end

local opened = false
if count > 0 or buckets == 0 then
  -- Starts never go backwards, so the newest bucket is always the latest one.
  if buckets > 0 and start < newest_start then
    start = newest_start
  end
  -- A lease never joins an earlier bucket: that would start counting it before it ends.
  if buckets > 0 and start - newest_start < group_ms and (mode ~= LEASE or start == newest_start) then
    newest_count = newest_count + count
  else
    if buckets > 1 then
      redis.call('RPUSH', buckets_key, struct.pack(BUCKET, newest_start, newest_count))
      redis.call('PEXPIRE', buckets_key, start - now + window_ms + 1)
    end
    buckets = buckets + 1
    newest_start, newest_count = start, count
    opened = true
  end
  total = total + count
  changed = true
end

if changed then
  if buckets == 1 then
    oldest_start, oldest_count = newest_start, newest_count
  end
  local header = struct.pack(HEADER, capacity, total, buckets, oldest_start, oldest_count,
    newest_start, newest_count)
  if opened then
    redis.call('SET', header_key, header, 'PX', newest_start - now + window_ms + 1)
  else
    -- Same length, written in place: cheaper than SET and keeps the TTL.
    redis.call('SETRANGE', header_key, '0', header)
  end
end
if mode == LEASE then
  return {count, newest_start, oldest_start + window_ms + 1 - now, total - oldest_count}
end
return -1
