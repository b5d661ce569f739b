"""Lua scripts of the Redis store: each runs atomically on the server, so several
calltrackd nodes allocating from one pool never hand out a number twice.

Keys of a pool P = "{tracker}:{pool}":
  ctd:free:P   ZSET number → time it may be handed out (released + cooldown; 0 never used)
  ctd:held:P   ZSET number → expires_at of its current reservation
  ctd:cfg:P    HASH cooldown
  ctd:num:N    HASH tracker, pool, cur, cur_start, cur_until, last, last_start, last_until
  ctd:hold:S   STRING the number session S holds (or held last)
  ctd:peak:P   HASH hour → peak concurrent reservations;  field "all" → all-time peak
  ctd:short:P  HASH hour → requests that found the pool empty
"""

# Shared prologue: expire reservations whose time has passed (lazily, on every call).
_EXPIRE = """
local function expire(P, now)
  local cooldown = tonumber(redis.call('HGET', 'ctd:cfg:' .. P, 'cooldown') or '0')
  local gone = redis.call('ZRANGEBYSCORE', 'ctd:held:' .. P, '-inf', now)
  for _, n in ipairs(gone) do
    local k = 'ctd:num:' .. n
    local h = redis.call('HMGET', k, 'cur', 'cur_start', 'cur_until')
    redis.call('HSET', k, 'last', h[1], 'last_start', h[2], 'last_until', h[3])
    redis.call('HDEL', k, 'cur', 'cur_start', 'cur_until')
    redis.call('ZREM', 'ctd:held:' .. P, n)
    redis.call('ZADD', 'ctd:free:' .. P, tonumber(h[3]) + cooldown, n)
  end
end

local function take(P, n, session, now, ttl, hour)
  local k = 'ctd:num:' .. n
  redis.call('ZREM', 'ctd:free:' .. P, n)
  redis.call('ZADD', 'ctd:held:' .. P, now + ttl, n)
  redis.call('HSET', k, 'cur', session, 'cur_start', now, 'cur_until', now + ttl)
  redis.call('SET', 'ctd:hold:' .. session, n, 'EX', 2592000)
  local count = redis.call('ZCARD', 'ctd:held:' .. P)
  local pk = 'ctd:peak:' .. P
  if count > tonumber(redis.call('HGET', pk, hour) or '0') then
    redis.call('HSET', pk, hour, count)
  end
  if count > tonumber(redis.call('HGET', pk, 'all') or '0') then
    redis.call('HSET', pk, 'all', count)
  end
  return {n, session, now, now + ttl}
end

-- renew the session's own number: held now, or lapsed and nobody took it since
local function renew(session, now, ttl, hour)
  local n = redis.call('GET', 'ctd:hold:' .. session)
  if not n then return nil end
  local k = 'ctd:num:' .. n
  local P = redis.call('HGET', k, 'tracker')
  if not P then return nil end
  P = P .. ':' .. redis.call('HGET', k, 'pool')
  expire(P, now)
  local h = redis.call('HMGET', k, 'cur', 'cur_start', 'last')
  if h[1] == session then
    redis.call('ZADD', 'ctd:held:' .. P, now + ttl, n)
    redis.call('HSET', k, 'cur_until', now + ttl)
    return {n, session, tonumber(h[2]), now + ttl}
  end
  if not h[1] and h[3] == session and redis.call('ZSCORE', 'ctd:free:' .. P, n) then
    return take(P, n, session, now, ttl, hour)
  end
  return nil
end
"""

# KEYS: none (pool keys are derived); ARGV: P, session, now, ttl, hour
RESERVE = _EXPIRE + """
local P, session = ARGV[1], ARGV[2]
local now, ttl, hour = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local mine = renew(session, now, ttl, hour)
if mine then return mine end
expire(P, now)
local free = redis.call('ZRANGEBYSCORE', 'ctd:free:' .. P, '-inf', now, 'LIMIT', 0, 1)
if #free == 0 then
  redis.call('HINCRBY', 'ctd:short:' .. P, hour, 1)
  return nil
end
return take(P, free[1], session, now, ttl, hour)
"""

# A given number for a returning visitor: free (nobody holds it, cool-down passed), or held
# now or last by `previous`, the visitor's earlier session (its hold ends now).
# ARGV: P, number, session, now, ttl, hour, previous ('' for none)
RESERVE_NUMBER = _EXPIRE + """
local P, n, session = ARGV[1], ARGV[2], ARGV[3]
local now, ttl, hour, prev = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
local k = 'ctd:num:' .. n
local h = redis.call('HMGET', k, 'tracker', 'pool')
if not h[1] or (h[1] .. ':' .. h[2]) ~= P then return nil end
expire(P, now)
h = redis.call('HMGET', k, 'cur', 'cur_start', 'last')
if h[1] == session then return renew(session, now, ttl, hour) end
if h[1] then
  if prev == '' or h[1] ~= prev then return nil end
  redis.call('HSET', k, 'last', h[1], 'last_start', h[2], 'last_until', now)
  redis.call('HDEL', k, 'cur', 'cur_start', 'cur_until')
  redis.call('ZREM', 'ctd:held:' .. P, n)
else
  local at = redis.call('ZSCORE', 'ctd:free:' .. P, n)
  if not at then return nil end
  if tonumber(at) > now and (prev == '' or h[3] ~= prev) then return nil end
end
return take(P, n, session, now, ttl, hour)
"""

# ARGV: session, now, ttl, hour
RENEW = _EXPIRE + """
return renew(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4])
"""

# ARGV: session, now
RELEASE = _EXPIRE + """
local session, now = ARGV[1], tonumber(ARGV[2])
local n = redis.call('GET', 'ctd:hold:' .. session)
if not n then return 0 end
local k = 'ctd:num:' .. n
local h = redis.call('HMGET', k, 'cur', 'cur_start', 'tracker', 'pool')
if h[1] ~= session then return 0 end
local P = h[3] .. ':' .. h[4]
local cooldown = tonumber(redis.call('HGET', 'ctd:cfg:' .. P, 'cooldown') or '0')
redis.call('HSET', k, 'last', session, 'last_start', h[2], 'last_until', now)
redis.call('HDEL', k, 'cur', 'cur_start', 'cur_until')
redis.call('ZREM', 'ctd:held:' .. P, n)
redis.call('ZADD', 'ctd:free:' .. P, now + cooldown, n)
return 1
"""

# ARGV: P, now — expire, then [size, free, reserved, cooling]
COUNTS = _EXPIRE + """
local P, now = ARGV[1], tonumber(ARGV[2])
expire(P, now)
local free = redis.call('ZCOUNT', 'ctd:free:' .. P, '-inf', now)
local all_free = redis.call('ZCARD', 'ctd:free:' .. P)
local held = redis.call('ZCARD', 'ctd:held:' .. P)
return {all_free + held, free, held, all_free - free}
"""

# ARGV: P, tracker, pool, cooldown, numbers... — make the pool exactly these numbers
SYNC_POOL = """
local P, tracker, pool, cooldown = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('HSET', 'ctd:cfg:' .. P, 'cooldown', cooldown)
local want = {}
for i = 5, #ARGV do
  local n = ARGV[i]
  want[n] = true
  local k = 'ctd:num:' .. n
  if redis.call('ZSCORE', 'ctd:free:' .. P, n) == false
     and redis.call('ZSCORE', 'ctd:held:' .. P, n) == false then
    redis.call('ZADD', 'ctd:free:' .. P, 0, n)
  end
  redis.call('HSET', k, 'tracker', tracker, 'pool', pool)
end
for _, key in ipairs({'ctd:free:' .. P, 'ctd:held:' .. P}) do
  for _, n in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if not want[n] then
      redis.call('ZREM', key, n)
      redis.call('DEL', 'ctd:num:' .. n)
    end
  end
end
redis.call('SADD', 'ctd:pools', P)
return 1
"""

# ARGV: P — forget a pool that left the configuration
DROP_POOL = """
local P = ARGV[1]
for _, key in ipairs({'ctd:free:' .. P, 'ctd:held:' .. P}) do
  for _, n in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    redis.call('DEL', 'ctd:num:' .. n)
  end
  redis.call('DEL', key)
end
redis.call('SREM', 'ctd:pools', P)
return 1
"""

# The outbox lease: due deliveries are pushed `lease` seconds into the future as they are
# handed out, so another node polling at the same moment does not send them too.
# ARGV: now, limit, lease, then the urls (destinations) whose rows the caller does not want
# now (their queues are full): skipped, at most 5,000 looked at, so that a backlog of one
# endpoint does not hide the rows of the others.
LEASE_DUE = """
local now, limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ids
if #ARGV <= 3 then
  ids = redis.call('ZRANGEBYSCORE', 'ctd:outbox:due', '-inf', now, 'LIMIT', 0, limit)
else
  local skip = {}
  for i = 4, #ARGV do skip[ARGV[i]] = true end
  ids = {}
  local offset, looked = 0, 0
  while #ids < limit and looked < 5000 do
    local chunk = redis.call('ZRANGEBYSCORE', 'ctd:outbox:due', '-inf', now, 'LIMIT', offset, 500)
    if #chunk == 0 then break end
    for _, id in ipairs(chunk) do
      looked = looked + 1
      local url = redis.call('HGET', 'ctd:dlv:' .. id, 'url')
      if not (url and skip[url]) then
        ids[#ids + 1] = id
        if #ids >= limit then break end
      end
    end
    offset = offset + #chunk
  end
end
for _, id in ipairs(ids) do
  redis.call('ZADD', 'ctd:outbox:due', now + lease, id)
end
return ids
"""

# Give back leased rows the worker did not start (endpoint busy, batch full): due again at
# their own next attempt time. ARGV: delivery ids
UNLEASE = """
for _, id in ipairs(ARGV) do
  if redis.call('ZSCORE', 'ctd:outbox:due', id) then
    local at = redis.call('HGET', 'ctd:dlv:' .. id, 'next_attempt_at')
    if at then redis.call('ZADD', 'ctd:outbox:due', tonumber(at), id) end
  end
end
return 1
"""

# A CDR and its outbox rows in one step. KEYS: none.
# ARGV: id, tracker, started_ts, caller, json, ndeliveries, then per delivery:
#       id, event_id, event, tracker, url, body, created_at, next_attempt_at, kind
SAVE_CALL = """
local id, tracker, ts, caller, data = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
redis.call('SET', 'ctd:call:' .. id, data)
redis.call('ZADD', 'ctd:calls', ts, id)
redis.call('ZADD', 'ctd:calls:' .. tracker, ts, id)
if caller ~= '' then redis.call('SADD', 'ctd:callers:' .. tracker, caller) end
local n = tonumber(ARGV[6])
local i = 7
for _ = 1, n do
  local did = ARGV[i]
  local k = 'ctd:dlv:' .. did
  if redis.call('EXISTS', k) == 0 then
    redis.call('HSET', k, 'id', did, 'event_id', ARGV[i + 1], 'event', ARGV[i + 2],
      'tracker', ARGV[i + 3], 'url', ARGV[i + 4], 'body', ARGV[i + 5],
      'created_at', ARGV[i + 6], 'next_attempt_at', ARGV[i + 7], 'attempts', 0,
      'status', 'pending', 'last_error', '', 'kind', ARGV[i + 8])
    redis.call('ZADD', 'ctd:outbox:due', tonumber(ARGV[i + 7]), did)
    redis.call('ZADD', 'ctd:outbox:all', tonumber(ARGV[i + 6]), did)
  end
  i = i + 9
end
-- after the deliveries: the node's open-calls set, and whether this version is open
if ARGV[i] then
  if ARGV[i + 1] == '1' then redis.call('SADD', ARGV[i], id)
  else redis.call('SREM', ARGV[i], id) end
end
return 1
"""
