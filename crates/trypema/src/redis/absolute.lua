-- Absolute strategy for one entity, atomically (this file follows window.lua). Buckets are
-- {start, count}; `param` is the sticky capacity. Times are the Redis server's (TIME, read here,
-- so no client's clock can widen the window).
--
-- KEYS[1]  the entity's key, {<prefix>:<key>}:a
-- ARGV[1]  little-endian doubles: mode, window_ms, group_ms, capacity for new state, count,
--          epoch for new state; lease mode adds lease_ms, need_min, need_total, extra and two
--          give-backs {start, epoch, amount}.
--
-- Modes and replies:
--   inc (1)        -1 allowed, or {retry_after_ms, remaining_after_waiting} rejected
--   check (2)      the same for one more unit, recording nothing
--   lease (3)      (hybrid) give back unused quota, then reserve for callers waiting
--                  (need_min is the smallest count waiting, need_total their sum; all or nothing
--                  for a caller that cannot fit) plus `extra`, at most half of what is left, in a
--                  bucket that starts when the lease ends: everything admitted under the lease
--                  stays counted a full window. Reply: doubles granted, lease_start, epoch,
--                  retry_after_ms, remaining_after_waiting, capacity, total, reset_ms.
--   get (4)        doubles 0, 0, 0, capacity, remaining, reset_ms; records nothing
--   refund (5)     take back up to `count` units, newest first, from buckets that have started
--                  (not hybrid leases). Reply as get, with the amount refunded first.
--   inc_quota (6)  inc, replying doubles allowed (1/0), retry_after_ms, remaining_after_waiting,
--                  capacity, remaining, reset_ms.
local INC, CHECK, LEASE, GET, REFUND, INC_QUOTA, PROBE = 1, 2, 3, 4, 5, 6, 7
local ARGS = ARGV[1]
if struct.unpack('<d', ARGS) == PROBE then
  return window_library().probe(KEYS[1])
end
local mode, window_ms, group_ms, new_capacity, count, new_epoch = struct.unpack('<dddddd', ARGS)
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- The common call, answered from the header alone (see window_library). Header: magic, clock,
-- epoch, capacity, buckets, head, total, oldest {start, count}, newest {start, count}.
if (mode == INC or mode == INC_QUOTA) and count > 0 then
  local raw = redis.pcall('GETRANGE', KEYS[1], '0', '87')
  if type(raw) == 'string' and #raw == 88 then
    local magic, clock, epoch, capacity, n, head, total, old_start, old_count, new_start,
      new_count = struct.unpack('<ddddddddddd', raw)
    now = math.max(now, clock)
    -- Nothing to evict: the oldest bucket is in the window and not empty.
    if magic == MAGIC + 2 and n >= 1 and now - old_start <= window_ms and old_count ~= 0 then
      local reset_ms = old_start + window_ms + 1 - now
      if total + count > capacity then
        -- Rejected: nothing changes.
        local retry_after = count > capacity and window_ms or reset_ms
        if mode == INC_QUOTA then
          return struct.pack('<dddddd', 0, retry_after, total - old_count, capacity,
            math.max(0, capacity - total), reset_ms)
        end
        return { retry_after, total - old_count }
      end
      local gap = math.max(now, new_start) - new_start
      local join = gap == 0 or gap < group_ms
      local buckets = join and n or n + 1
      if buckets <= MAX_BUCKETS and not rewrites_array(head, n, buckets) then
        if join then
          new_count = new_count + count
          if n == 1 then
            old_count = new_count
          end
        else
          if n >= 2 then
            -- The newest bucket moves to the end of the array.
            redis.call('SETRANGE', KEYS[1], 88 + (head + n - 2) * 16,
              struct.pack('<dd', new_start, new_count))
          end
          new_start, new_count = now, count
        end
        redis.call('SETRANGE', KEYS[1], '0', struct.pack('<ddddddddddd', magic, now, epoch,
          capacity, buckets, head, total + count, old_start, old_count, new_start, new_count))
        if not join then
          redis.call('PEXPIRE', KEYS[1], math.max(1, math.floor(window_ms + 1)))
        end
        if mode == INC_QUOTA then
          return struct.pack('<dddddd', 1, 0, 0, capacity, capacity - total - count, reset_ms)
        end
        return -1
      end
    end
  end
end

local Window = window_library()
local w = Window.open(KEYS[1], 2, 0, now)
w:evict(window_ms)
local now = w.now
local capacity = w.n > 0 and w.param or new_capacity

local function total()
  return w.n > 0 and w.sum[1] or 0
end

-- The rejection hints: when the oldest bucket leaves, and what is left then. A count that can
-- never fit is told to wait a whole window.
local function hints(n)
  if w.n == 0 then
    return window_ms, 0
  end
  local remaining = total() - w.old[2]
  if n > capacity then
    return window_ms, remaining
  end
  return w:reset_ms(window_ms), remaining
end

local function quota(first, retry_after, remaining_after)
  return struct.pack('<dddddd', first, retry_after, remaining_after, capacity,
    math.max(0, capacity - total()), w:reset_ms(window_ms))
end

if mode == INC or mode == CHECK or mode == INC_QUOTA then
  local n = mode == CHECK and 1 or count
  if (mode == CHECK and w.n == 0) or total() + n <= capacity then
    if mode ~= CHECK and n > 0 then
      if w.n == 0 then
        w:create(new_capacity, new_epoch)
      end
      w:add(now, { n }, group_ms, false)
    end
    w:save(window_ms)
    if mode == INC_QUOTA then
      return quota(1, 0, 0)
    end
    return -1
  end
  w:save(window_ms)
  local retry_after, remaining_after = hints(n)
  if mode == INC_QUOTA then
    return quota(0, retry_after, remaining_after)
  end
  return { retry_after, remaining_after }
end

if mode == GET then
  w:save(window_ms)
  return quota(0, 0, 0)
end

if mode == REFUND then
  local refunded = w:take_back(count, function(bucket)
    -- A bucket that starts in the future is a hybrid lease: its units may still be admitted
    -- by the instance holding it, so only that instance may take them back.
    if bucket[1] > now then
      return 0
    end
    return bucket[2]
  end)
  w:evict(window_ms)
  w:save(window_ms)
  return quota(refunded, 0, 0)
end

-- LEASE
local lease_ms, need_min, need_total, extra, start_1, epoch_1, amount_1, start_2, epoch_2,
  amount_2 = struct.unpack('<dddddddddd', ARGS, 49)
w:take_from(start_1, epoch_1, 2, amount_1)
w:take_from(start_2, epoch_2, 2, amount_2)
w:evict(window_ms)
if w.n == 0 then
  capacity = new_capacity
end
local available = math.max(0, capacity - total())
local granted = 0
if need_min <= available and (need_total > 0 or extra > 0) then
  granted = math.min(need_total, available)
  granted = granted + math.min(extra, math.floor((available - granted) / 2))
end
local lease_start = now + lease_ms
if granted > 0 then
  if w.n == 0 then
    w:create(new_capacity, new_epoch)
  end
  w:add(lease_start, { granted }, group_ms, true)
  lease_start = w.new[1]
end
w:save(window_ms)
local retry_after, remaining_after = hints(math.max(need_min, 1))
return struct.pack('<dddddddd', granted, lease_start, w.epoch or 0, retry_after, remaining_after,
  capacity, total(), w:reset_ms(window_ms))
