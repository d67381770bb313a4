#!lua name=adcache
-- adcache 0.1.0: generated from lua/ by `adcache render`. Do not edit: edit lua/ and re-render.

-- ==== helper: errors (lua/_errors.lua.j2) ====
--@helper errors: the error contract. fail() raises an error reply whose first word is a code
-- from lua/errors.yaml; the Python client maps that word to a typed exception.
local E = {}
E.CODES = {
  ADCACHE_BADARG = true,
  ADCACHE_ARITY = true,
  ADCACHE_BADKEY = true,
  ADCACHE_CROSSSLOT = true,
  ADCACHE_NOTFOUND = true,
  ADCACHE_EXISTS = true,
  ADCACHE_CONFLICT = true,
  ADCACHE_STATE = true,
  ADCACHE_LIMIT = true,
  ADCACHE_WRONGTYPE = true,
}

-- Raise an error reply "<CODE> <message>". Callers validate everything before their first write,
-- so a call that fails here has changed nothing.
function E.fail(code, msg)
  if not E.CODES[code] then
    -- A typo in a code is a library bug; still answer with a stable code.
    msg = 'unknown error code ' .. tostring(code) .. ': ' .. tostring(msg)
    code = 'ADCACHE_WRONGTYPE'
  end
  error({err = code .. ' ' .. msg}, 0)
end

-- ==== helper: keys (lua/_keys.lua.j2) ====
--@helper keys: generated from lua/keyspace.yaml. Checks KEYS against the keyspace and builds
-- sibling keys of the same hash tag.

local K = {}
K.PREFIX = 'ad'
K.MAX_ID = 128
-- name -> {entity letter, Lua pattern of the suffix}
K.SPEC = {
  session = {'s', '^sess$'},
  cache_value = {'k', '^v:[^{}]+$'},
  cache_lock = {'k', '^l:[^{}]+$'},
  cache_writer = {'k', '^w:[^{}]+$'},
  cache_tag = {'k', '^t:[^{}]+$'},
  cache_stream = {'k', '^wb$'},
}

-- Split '<prefix>:{<letter>:<id>}:<suffix>' into letter, id, suffix (nil when it does not parse).
function K.split(key)
  return string.match(key, '^ad:{(%a):([^{}]+)}:(.+)$')
end

local function check_one(key, name, i)
  local spec = K.SPEC[name]
  local letter, id, suffix = K.split(key)
  if not letter or letter ~= spec[1] or not string.match(suffix, spec[2]) then
    E.fail('ADCACHE_BADKEY', 'KEYS[' .. i .. '] must be a ' .. name .. ' key, got ' .. key)
  end
  if #id > K.MAX_ID then
    E.fail('ADCACHE_BADKEY', 'KEYS[' .. i .. '] id is longer than ' .. K.MAX_ID .. ' bytes')
  end
  return letter .. ':' .. id, id
end

-- Check that keys[1..#names] match the named patterns and share one hash tag. When `rest` names a
-- pattern, any further keys must match it too (variadic tail, at most `max_rest`).
-- Returns the shared tag ('<letter>:<id>') and the entity id.
function K.check(keys, names, rest, max_rest)
  local n = #names
  if #keys < n or (not rest and #keys ~= n) then
    E.fail('ADCACHE_ARITY', 'expected ' .. n .. (rest and ' or more' or '') .. ' keys, got ' .. #keys)
  end
  if rest and max_rest and #keys - n > max_rest then
    E.fail('ADCACHE_LIMIT', 'at most ' .. max_rest .. ' ' .. rest .. ' keys per call')
  end
  local tag, id = nil, nil
  for i = 1, #keys do
    local t, kid = check_one(keys[i], names[i] or rest, i)
    if tag == nil then
      tag, id = t, kid
    elseif t ~= tag then
      E.fail('ADCACHE_CROSSSLOT', 'KEYS[' .. i .. '] is in {' .. t .. '}, not {' .. tag .. '}')
    end
  end
  return tag, id
end

-- Key builders from a tag '<letter>:<id>' (for keys derived inside a call from a passed key's tag).
function K.session(tag)
  return 'ad:{' .. tag .. '}:sess'
end
function K.cache_value(tag, key)
  return 'ad:{' .. tag .. '}:v:' .. key
end
function K.cache_lock(tag, key)
  return 'ad:{' .. tag .. '}:l:' .. key
end
function K.cache_writer(tag, key)
  return 'ad:{' .. tag .. '}:w:' .. key
end
function K.cache_tag(tag, name)
  return 'ad:{' .. tag .. '}:t:' .. name
end
function K.cache_stream(tag)
  return 'ad:{' .. tag .. '}:wb'
end

-- ==== helper: validate (lua/_validate.lua.j2) ====
--@helper validate: argument checks shared by every domain. Each returns the parsed value or
-- raises ADCACHE_BADARG naming the argument, so every function validates before it writes.

local V = {}
-- Integers stay exact in Lua doubles up to 2^53; 15 digits keeps every accepted value below that.
V.MAX_INT = 999999999999999

function V.str(v, name, maxlen)
  if type(v) ~= 'string' then E.fail('ADCACHE_BADARG', name .. ' is missing') end
  if maxlen and #v > maxlen then
    E.fail('ADCACHE_BADARG', name .. ' is longer than ' .. maxlen .. ' bytes')
  end
  return v
end

-- An id: non-empty, at most 128 bytes, no braces (they would break hash tags).
function V.id(v, name)
  V.str(v, name, 128)
  if v == '' then E.fail('ADCACHE_BADARG', name .. ' must not be empty') end
  if string.find(v, '[{}]') then E.fail('ADCACHE_BADARG', name .. ' must not contain { or }') end
  return v
end

-- A decimal integer string in [min, max] (defaults: any 15-digit integer).
function V.int(v, name, min, max)
  if type(v) ~= 'string' or not string.match(v, '^%-?%d+$') or #v > 16 then
    E.fail('ADCACHE_BADARG', name .. ' must be an integer, got ' .. tostring(v))
  end
  local n = tonumber(v)
  min = min or -V.MAX_INT
  max = max or V.MAX_INT
  if n < min or n > max then
    E.fail('ADCACHE_BADARG', name .. ' must be between ' .. string.format('%d', min) .. ' and '
      .. string.format('%d', max) .. ', got ' .. v)
  end
  return n
end

function V.uint(v, name, max) return V.int(v, name, 0, max) end
function V.pos(v, name, max) return V.int(v, name, 1, max) end

-- One of a fixed set of words; `allowed` is a set table {word = true}.
function V.enum(v, name, allowed)
  if type(v) ~= 'string' or not allowed[v] then
    local words = {}
    for w in pairs(allowed) do words[#words + 1] = w end
    table.sort(words)
    E.fail('ADCACHE_BADARG', name .. ' must be one of ' .. table.concat(words, ', ') .. ', got '
      .. tostring(v))
  end
  return v
end

-- ARGV count in [min, max]; `max` nil means unbounded.
function V.nargs(args, min, max)
  if #args < min or (max and #args > max) then
    local want = min .. ' or more'
    if max == min then want = tostring(min) elseif max then want = min .. ' to ' .. max end
    E.fail('ADCACHE_ARITY', 'expected ' .. want .. ' arguments, got ' .. #args)
  end
end

-- Name/value pairs from args[first..]: returns a list of {name, value}; names are ids.
function V.pairs(args, first, what, max_pairs, max_value)
  local n = #args - first + 1
  if n % 2 ~= 0 then E.fail('ADCACHE_ARITY', what .. ' must come as name/value pairs') end
  if max_pairs and n / 2 > max_pairs then
    E.fail('ADCACHE_LIMIT', 'at most ' .. max_pairs .. ' ' .. what .. ' per call')
  end
  local out = {}
  for i = first, #args, 2 do
    out[#out + 1] = {V.id(args[i], what .. ' name'), V.str(args[i + 1], what .. ' value', max_value)}
  end
  return out
end

-- ==== helper: time (lua/_time.lua.j2) ====
--@helper time: the server clock in milliseconds and calendar arithmetic (UTC plus an offset in
-- seconds). Windows anchor to calendar boundaries, so an increment never extends a window.
local T = {}
T.SECOND, T.MINUTE, T.HOUR, T.DAY = 1000, 60000, 3600000, 86400000

function T.now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Days since 1970-01-01 of a civil date, and back (H. Hinnant's algorithms; proleptic Gregorian).
function T.days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

function T.civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m, d
end

-- Start (ms, UTC) of the calendar period containing `ms`, in a zone `offset_s` east of UTC.
-- unit: 'minute' | 'hour' | 'day' | 'week' (weeks start on Monday) | 'month'.
function T.period_start(ms, unit, offset_s)
  local off = (offset_s or 0) * 1000
  local l = ms + off
  if unit == 'minute' then return l - l % T.MINUTE - off end
  if unit == 'hour' then return l - l % T.HOUR - off end
  local days = math.floor(l / T.DAY)
  if unit == 'day' then return days * T.DAY - off end
  if unit == 'week' then
    -- 1970-01-01 was a Thursday: (days + 3) % 7 is 0 on Mondays.
    return (days - (days + 3) % 7) * T.DAY - off
  end
  local y, m = T.civil_from_days(days)
  return T.days_from_civil(y, m, 1) * T.DAY - off
end

-- Start of the period after the one containing `ms`.
function T.period_end(ms, unit, offset_s)
  local s = T.period_start(ms, unit, offset_s)
  if unit == 'minute' then return s + T.MINUTE end
  if unit == 'hour' then return s + T.HOUR end
  if unit == 'day' then return s + T.DAY end
  if unit == 'week' then return s + 7 * T.DAY end
  local off = (offset_s or 0) * 1000
  local y, m = T.civil_from_days(math.floor((s + off) / T.DAY))
  if m == 12 then y, m = y + 1, 1 else m = m + 1 end
  return T.days_from_civil(y, m, 1) * T.DAY - off
end

-- 'YYYYMMDD' and 'YYYYMMDDHH' labels of the local date of `ms` (bucket names, never server-local).
function T.ymd(ms, offset_s)
  local y, m, d = T.civil_from_days(math.floor((ms + (offset_s or 0) * 1000) / T.DAY))
  return string.format('%04d%02d%02d', y, m, d)
end

function T.ymdh(ms, offset_s)
  local l = ms + (offset_s or 0) * 1000
  return T.ymd(ms, offset_s) .. string.format('%02d', math.floor((l % T.DAY) / T.HOUR))
end

-- ==== domain: cache (lua/cache.lua.j2) ====
do
--@domain cache: the server side of the caching strategies (adcache.strategies): read with the
-- loader lock, fill by the lock owner, write, invalidate by key and by tag, and the write-back
-- write (value + change record in one call) with its acknowledgement.

-- A cache id is '<cache name>.<shard>': a value, its lock, the shard's tag sets and the shard's
-- write-back stream share one hash tag, so each call below touches one slot.
-- Value (hash): p = payload, x = logical expiry (ms), d = load time (ms, for early refresh),
-- n = '1' for a negative entry (the source has no such key). The key lives until x + grace: past
-- x it is stale, served only while one loader refreshes it.
-- A write-back value is dirty until flushed: w = the stream id of its change, e = the expiry it
-- gets once flushed. A dirty value has no TTL and is never reloaded (the database is behind it);
-- ac_cache_wb_ack gives it back its expiry when the change with that id is committed.
local C = {}
C.MAX_TTL_MS = 30 * T.DAY
C.MAX_LOCK_MS = 10 * T.MINUTE
C.MAX_PAYLOAD = 4 * 1024 * 1024
C.MAX_TAGS = 32
C.MAX_ACK = 1000
C.MAX_BATCH = 500

-- keys[1] (a value key) and keys[2..n] (its lock, writer... keys) must name the same cache key;
-- returns that key.
function C.same_key(keys, n)
  local _, _, vs = K.split(keys[1])
  local k = string.sub(vs, 3)
  for i = 2, n or 2 do
    local _, _, s = K.split(keys[i])
    if string.sub(s, 3) ~= k then
      E.fail('ADCACHE_BADKEY', 'KEYS[' .. i .. '] must belong to ' .. k .. ', got ' .. keys[i])
    end
  end
  return k
end

-- Refuse keys holding another type before the first write, so an error changes nothing.
function C.expect_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    E.fail('ADCACHE_WRONGTYPE', key .. ' holds a ' .. t .. ', not a ' .. want)
  end
end

function C.is_hash(key)
  return redis.call('TYPE', key)['ok'] == 'hash'
end

-- A dirty value (write-back, not flushed yet) survives invalidation: once flushed, the database
-- holds exactly it, so dropping it would only let a reader cache the older database row.
function C.dirty(vkey)
  return C.is_hash(vkey) and redis.call('HEXISTS', vkey, 'w') == 1
end

function C.check_types(keys, first_tag, stream)
  C.expect_type(keys[1], 'hash')
  if stream then C.expect_type(stream, 'stream') end
  for i = first_tag, #keys do C.expect_type(keys[i], 'set') end
end

-- Write the value and register it in its tag sets (keys[first_tag..]); cancels any loader by
-- deleting the lock, so a load that started before this write can never overwrite it.
function C.store(keys, member, first_tag, payload, negative, ttl, grace, delta, now)
  if negative then payload, grace = '', 0 end
  redis.call('HSET', keys[1], 'p', payload, 'x', now + ttl, 'd', delta, 'n', negative and '1' or '0')
  redis.call('HDEL', keys[1], 'w', 'e')
  redis.call('PEXPIREAT', keys[1], now + ttl + grace)
  redis.call('DEL', keys[2])
  local life = ttl + grace
  for i = first_tag, #keys do
    redis.call('SADD', keys[i], member)
    if redis.call('PTTL', keys[i]) < life then redis.call('PEXPIRE', keys[i], life) end
  end
end

-- Take the loader lock; already holding it counts (a call retried after a lost reply).
function C.lock(key, token, ms)
  return redis.call('SET', key, token, 'NX', 'PX', ms) or redis.call('GET', key) == token
end

-- The read of ac_cache_get (see its reply): value or loader lock, in one step.
function C.lookup(vkey, lkey, token, lock_ms, refresh, now)
  local v = redis.call('HMGET', vkey, 'p', 'x', 'd', 'n', 'w')
  if v[2] then
    local remaining = tonumber(v[2]) - now
    local delta = tonumber(v[3]) or 0
    if v[5] then
      -- Dirty (write-back not flushed yet): the cache is the truth, never stale, never reloaded.
      remaining = math.max(remaining, 1)
      if v[4] == '1' then return {'neg', '', remaining, 0} end
      return {'hit', v[1], remaining, 0}
    end
    if remaining > 0 then
      if v[4] == '1' then return {'neg', '', remaining, delta} end
      if refresh and C.lock(lkey, token, lock_ms) then
        return {'reload', v[1], remaining, delta}
      end
      return {'hit', v[1], remaining, delta}
    end
    if v[4] ~= '1' then
      if C.lock(lkey, token, lock_ms) then return {'reload', v[1], remaining, delta} end
      return {'stale', v[1], remaining, delta}
    end
  end
  if C.lock(lkey, token, lock_ms) then return {'load', '', 0, 0} end
  return {'wait', '', redis.call('PTTL', lkey), 0}
end

--- @function ac_cache_get
--- @summary Read a cached value; when it is missing or stale, take the loader lock if it is free.
--- @keys cache_value cache_lock
--- @argv token lock_ttl_ms refresh(0|1: take the lock even when the value is fresh)
--- @reply array: status, payload, remaining_ms, load_ms. status: hit (fresh), neg (fresh negative entry), stale (past its TTL, another caller loads it: serve it), load (missing: you hold the lock, load it), reload (stale, or refresh=1: you hold the lock; payload is the old value), wait (missing, another caller loads it; remaining_ms is the lock's TTL)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_WRONGTYPE
local function cache_get(keys, args)
  K.check(keys, {'cache_value', 'cache_lock'})
  C.same_key(keys)
  V.nargs(args, 3, 3)
  local token = V.id(args[1], 'token')
  local lock_ms = V.pos(args[2], 'lock_ttl_ms', C.MAX_LOCK_MS)
  local refresh = V.enum(args[3], 'refresh', {['0'] = true, ['1'] = true}) == '1'
  C.expect_type(keys[1], 'hash')
  return C.lookup(keys[1], keys[2], token, lock_ms, refresh, T.now_ms())
end

--- @function ac_cache_get_many
--- @summary ac_cache_get for many keys of one shard: their value keys, then their lock keys.
--- @keys cache_value... cache_lock...
--- @argv token lock_ttl_ms
--- @reply flat array: status, payload, remaining_ms, load_ms for each key in KEYS order (as ac_cache_get)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE
local function cache_get_many(keys, args)
  local n = #keys / 2
  if n < 1 or n ~= math.floor(n) then
    E.fail('ADCACHE_ARITY', 'expected value keys then as many lock keys, got ' .. #keys .. ' keys')
  end
  if n > C.MAX_BATCH then E.fail('ADCACHE_LIMIT', 'at most ' .. C.MAX_BATCH .. ' keys per call') end
  local names = {}
  for i = 1, n do names[i], names[n + i] = 'cache_value', 'cache_lock' end
  K.check(keys, names)
  for i = 1, n do C.same_key({keys[i], keys[n + i]}) end
  V.nargs(args, 2, 2)
  local token = V.id(args[1], 'token')
  local lock_ms = V.pos(args[2], 'lock_ttl_ms', C.MAX_LOCK_MS)
  for i = 1, n do C.expect_type(keys[i], 'hash') end
  local now = T.now_ms()
  local out = {}
  for i = 1, n do
    local r = C.lookup(keys[i], keys[n + i], token, lock_ms, false, now)
    for j = 1, 4 do out[#out + 1] = r[j] end
  end
  return out
end

--- @function ac_cache_fill
--- @summary Store a loaded value, only while the caller still owns the loader lock; releases it.
--- @keys cache_value cache_lock cache_tag...
--- @argv token kind(value|negative) payload ttl_ms grace_ms load_ms
--- @reply integer: 1 when stored, 0 when the lock was lost (a write or invalidation came first, or it expired): nothing is stored
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE
local function cache_fill(keys, args)
  K.check(keys, {'cache_value', 'cache_lock'}, 'cache_tag', C.MAX_TAGS)
  local member = C.same_key(keys)
  V.nargs(args, 6, 6)
  local token = V.id(args[1], 'token')
  local negative = V.enum(args[2], 'kind', {value = true, negative = true}) == 'negative'
  local payload = V.str(args[3], 'payload', C.MAX_PAYLOAD)
  local ttl = V.pos(args[4], 'ttl_ms', C.MAX_TTL_MS)
  local grace = V.uint(args[5], 'grace_ms', C.MAX_TTL_MS)
  local delta = V.uint(args[6], 'load_ms', C.MAX_LOCK_MS)
  C.check_types(keys, 3)
  if redis.call('GET', keys[2]) ~= token then return 0 end
  C.store(keys, member, 3, payload, negative, ttl, grace, delta, T.now_ms())
  return 1
end

--- @function ac_cache_release
--- @summary Give up the loader lock (a failed load), so that a waiting caller can take it at once.
--- @keys cache_value cache_lock
--- @argv token
--- @reply integer: 1 when the caller's lock was released, 0 when it held none
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG
local function cache_release(keys, args)
  K.check(keys, {'cache_value', 'cache_lock'})
  C.same_key(keys)
  V.nargs(args, 1, 1)
  local token = V.id(args[1], 'token')
  if redis.call('GET', keys[2]) ~= token then return 0 end
  return redis.call('DEL', keys[2])
end

--- @function ac_cache_write_begin
--- @summary Write-through, before the database write: become the key's last writer and cancel any loader of it.
--- @keys cache_value cache_lock cache_writer
--- @argv token ttl_ms
--- @reply integer: 1
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG
local function cache_write_begin(keys, args)
  K.check(keys, {'cache_value', 'cache_lock', 'cache_writer'})
  C.same_key(keys, 3)
  V.nargs(args, 2, 2)
  local token = V.id(args[1], 'token')
  local ttl = V.pos(args[2], 'ttl_ms', C.MAX_LOCK_MS)
  redis.call('DEL', keys[2])
  redis.call('SET', keys[3], token, 'PX', ttl)
  return 1
end

--- @function ac_cache_set
--- @summary Write-through, after the database write: store the value if no other writer began since the caller did, else drop the key (and make the other writer drop it too). Cancels any loader.
--- @keys cache_value cache_lock cache_writer cache_tag...
--- @argv token kind(value|negative) payload ttl_ms grace_ms
--- @reply integer: 1 when stored, 0 when writes overlapped (the key was dropped instead)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE
local function cache_set(keys, args)
  K.check(keys, {'cache_value', 'cache_lock', 'cache_writer'}, 'cache_tag', C.MAX_TAGS)
  local member = C.same_key(keys, 3)
  V.nargs(args, 5, 5)
  local token = V.id(args[1], 'token')
  local negative = V.enum(args[2], 'kind', {value = true, negative = true}) == 'negative'
  local payload = V.str(args[3], 'payload', C.MAX_PAYLOAD)
  local ttl = V.pos(args[4], 'ttl_ms', C.MAX_TTL_MS)
  local grace = V.uint(args[5], 'grace_ms', C.MAX_TTL_MS)
  C.check_types(keys, 4)
  if redis.call('GET', keys[3]) ~= token then
    -- Another writer began since: the database may have serialized the two in either order, so
    -- neither may store. Drop the key, and the writer token too, so that the other writer's set
    -- (before or after this one) drops it as well; the next read loads the database's value.
    redis.call('DEL', keys[1], keys[2], keys[3])
    return 0
  end
  redis.call('DEL', keys[3])
  C.store({keys[1], keys[2], unpack(keys, 4)}, member, 3, payload, negative, ttl, grace, 0,
    T.now_ms())
  return 1
end

--- @function ac_cache_invalidate
--- @summary Drop a cached value and cancel any loader of it (its fill will be refused). A dirty write-back value is kept.
--- @keys cache_value cache_lock
--- @argv none
--- @reply integer: 1 when a value was dropped, 0 when none was cached (or it is dirty)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT
local function cache_invalidate(keys, args)
  K.check(keys, {'cache_value', 'cache_lock'})
  C.same_key(keys)
  V.nargs(args, 0, 0)
  local n = 0
  if not C.dirty(keys[1]) then n = redis.call('DEL', keys[1]) end
  redis.call('DEL', keys[2])
  return n
end

--- @function ac_cache_invalidate_tag
--- @summary Drop every value of one shard carrying a tag (dirty write-back values excepted), cancel their loaders, drop the tag set.
--- @keys cache_tag
--- @argv none
--- @reply integer: the number of values dropped
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_WRONGTYPE
local function cache_invalidate_tag(keys, args)
  -- The member keys are derived from the tag (K.cache_value/K.cache_lock): the client cannot
  -- know which keys carry a tag, and they share the tag set's hash tag by construction.
  local tag = K.check(keys, {'cache_tag'})
  V.nargs(args, 0, 0)
  C.expect_type(keys[1], 'set')
  local n = 0
  for _, m in ipairs(redis.call('SMEMBERS', keys[1])) do
    local vkey = K.cache_value(tag, m)
    if not C.dirty(vkey) then
      n = n + redis.call('DEL', vkey)
      redis.call('SREM', keys[1], m)  -- a dirty member keeps its tag
    end
    redis.call('DEL', K.cache_lock(tag, m))
  end
  return n
end

--- @function ac_cache_wb_write
--- @summary Write-back: store the value (or a negative entry for a delete), pinned until flushed, and append its change record to the shard's stream, atomically.
--- @keys cache_value cache_lock cache_stream cache_tag...
--- @argv op(set|del) payload ttl_ms grace_ms
--- @reply string: the stream id of the change record
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE
local function cache_wb_write(keys, args)
  K.check(keys, {'cache_value', 'cache_lock', 'cache_stream'}, 'cache_tag', C.MAX_TAGS)
  local member = C.same_key(keys)
  V.nargs(args, 4, 4)
  local op = V.enum(args[1], 'op', {set = true, del = true})
  local payload = V.str(args[2], 'payload', C.MAX_PAYLOAD)
  local ttl = V.pos(args[3], 'ttl_ms', C.MAX_TTL_MS)
  local grace = V.uint(args[4], 'grace_ms', C.MAX_TTL_MS)
  if op == 'del' then payload, grace = '', 0 end
  C.check_types(keys, 4, keys[3])
  local now = T.now_ms()
  local id = redis.call('XADD', keys[3], '*', 'k', member, 'op', op, 'p', payload)
  C.store({keys[1], keys[2], unpack(keys, 4)}, member, 3, payload, op == 'del', ttl, grace, 0, now)
  -- Pinned until flushed (see the header): no TTL, the id of the change that unpins it.
  redis.call('HSET', keys[1], 'w', id, 'e', now + ttl + grace)
  redis.call('PERSIST', keys[1])
  return id
end

--- @function ac_cache_wb_ack
--- @summary Acknowledge committed change records for a consumer group, delete them from the stream, and unpin the values they wrote (unless written again since).
--- @keys cache_stream cache_value...
--- @argv group id... (the first ids are those of the value keys, in KEYS order; then ids whose record is gone)
--- @reply integer: the number of entries acknowledged
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE ADCACHE_NOTFOUND
local function cache_wb_ack(keys, args)
  K.check(keys, {'cache_stream'}, 'cache_value', C.MAX_ACK)
  V.nargs(args, 2)
  local group = V.id(args[1], 'group')
  if #args - 1 > C.MAX_ACK then
    E.fail('ADCACHE_LIMIT', 'at most ' .. C.MAX_ACK .. ' ids per call')
  end
  if #keys - 1 > #args - 1 then
    E.fail('ADCACHE_ARITY', 'one id per value key at least, got ' .. (#args - 1) .. ' ids for '
      .. (#keys - 1) .. ' value keys')
  end
  local ids = {}
  for i = 2, #args do
    if not string.match(args[i], '^%d+%-%d+$') then
      E.fail('ADCACHE_BADARG', 'id must be a stream id <ms>-<seq>, got ' .. args[i])
    end
    ids[#ids + 1] = args[i]
  end
  C.expect_type(keys[1], 'stream')
  for i = 2, #keys do C.expect_type(keys[i], 'hash') end
  if redis.call('EXISTS', keys[1]) == 0 then return 0 end
  -- XACK answers 0 for an unknown group: refuse it, or XDEL would drop unflushed changes.
  local known = false
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', keys[1])) do
    for i = 1, #g, 2 do
      if g[i] == 'name' and g[i + 1] == group then known = true end
    end
  end
  if not known then E.fail('ADCACHE_NOTFOUND', 'no consumer group ' .. group .. ' on ' .. keys[1]) end
  local now = T.now_ms()
  for i = 2, #keys do
    -- Unpin only if this record is the value's latest write (its id is unique in the stream).
    local w = redis.call('HMGET', keys[i], 'w', 'e')
    if w[1] == ids[i - 1] then
      redis.call('HDEL', keys[i], 'w', 'e')
      local at = tonumber(w[2]) or now
      if at > now then redis.call('PEXPIREAT', keys[i], at) else redis.call('DEL', keys[i]) end
    end
  end
  local n = redis.call('XACK', keys[1], group, unpack(ids))
  redis.call('XDEL', keys[1], unpack(ids))
  return n
end

redis.register_function{function_name='ac_cache_get', callback=cache_get, flags={}, description='Read a cached value; when it is missing or stale, take the loader lock if it is free.'}
redis.register_function{function_name='ac_cache_get_many', callback=cache_get_many, flags={}, description='ac_cache_get for many keys of one shard: their value keys, then their lock keys.'}
redis.register_function{function_name='ac_cache_fill', callback=cache_fill, flags={}, description='Store a loaded value, only while the caller still owns the loader lock; releases it.'}
redis.register_function{function_name='ac_cache_release', callback=cache_release, flags={}, description='Give up the loader lock (a failed load), so that a waiting caller can take it at once.'}
redis.register_function{function_name='ac_cache_write_begin', callback=cache_write_begin, flags={}, description='Write-through, before the database write: become the key\'s last writer and cancel any loader of it.'}
redis.register_function{function_name='ac_cache_set', callback=cache_set, flags={}, description='Write-through, after the database write: store the value if no other writer began since the caller did, else drop the key (and make the other writer drop it too). Cancels any loader.'}
redis.register_function{function_name='ac_cache_invalidate', callback=cache_invalidate, flags={}, description='Drop a cached value and cancel any loader of it (its fill will be refused). A dirty write-back value is kept.'}
redis.register_function{function_name='ac_cache_invalidate_tag', callback=cache_invalidate_tag, flags={}, description='Drop every value of one shard carrying a tag (dirty write-back values excepted), cancel their loaders, drop the tag set.'}
redis.register_function{function_name='ac_cache_wb_write', callback=cache_wb_write, flags={}, description='Write-back: store the value (or a negative entry for a delete), pinned until flushed, and append its change record to the shard\'s stream, atomically.'}
redis.register_function{function_name='ac_cache_wb_ack', callback=cache_wb_ack, flags={}, description='Acknowledge committed change records for a consumer group, delete them from the stream, and unpin the values they wrote (unless written again since).'}
end

-- ==== domain: session (lua/session.lua.j2) ====
do
--@domain session: browsing sessions with a sliding idle TTL inside an absolute lifetime.

-- Record (hash): user, created, deadline (absolute end, ms), idle (ms), touched (ms),
-- a.<name> = attribute value. The key's PEXPIREAT is always min(touched + idle, deadline).
local MAX_TTL_MS = 30 * T.DAY
local MAX_ATTRS = 64
local MAX_ATTR_VALUE = 4096

local function record_reply(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return false end
  flat[#flat + 1] = 'pttl'
  flat[#flat + 1] = redis.call('PTTL', key)
  return flat
end

--- @function ac_session_create
--- @summary Create a session for a user with an idle TTL and an absolute lifetime.
--- @keys session
--- @argv user_id idle_ttl_ms max_lifetime_ms [attr_name attr_value]...
--- @reply the record as for ac_session_get
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_EXISTS
local function session_create(keys, args)
  K.check(keys, {'session'})
  V.nargs(args, 3)
  local user = V.id(args[1], 'user_id')
  local idle = V.pos(args[2], 'idle_ttl_ms', MAX_TTL_MS)
  local life = V.pos(args[3], 'max_lifetime_ms', MAX_TTL_MS)
  local attrs = V.pairs(args, 4, 'attribute', MAX_ATTRS, MAX_ATTR_VALUE)
  if redis.call('EXISTS', keys[1]) == 1 then
    E.fail('ADCACHE_EXISTS', 'session ' .. keys[1] .. ' exists')
  end
  local now = T.now_ms()
  local deadline = now + life
  local fields = {'user', user, 'created', now, 'touched', now, 'idle', idle, 'deadline', deadline}
  for _, p in ipairs(attrs) do
    fields[#fields + 1] = 'a.' .. p[1]
    fields[#fields + 1] = p[2]
  end
  redis.call('HSET', keys[1], unpack(fields))
  redis.call('PEXPIREAT', keys[1], math.min(now + idle, deadline))
  return record_reply(keys[1])
end

--- @function ac_session_get
--- @flags no-writes
--- @summary Read a session; nil when it is unknown or expired.
--- @keys session
--- @argv none
--- @reply field/value array of the record plus pttl, or nil
--- @errors ADCACHE_ARITY ADCACHE_BADKEY
local function session_get(keys, args)
  K.check(keys, {'session'})
  V.nargs(args, 0, 0)
  return record_reply(keys[1])
end

--- @function ac_session_touch
--- @summary Slide the idle TTL forward from now, never past the absolute lifetime.
--- @keys session
--- @argv none
--- @reply array: expires_at_ms, deadline_ms
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_NOTFOUND ADCACHE_WRONGTYPE
local function session_touch(keys, args)
  K.check(keys, {'session'})
  V.nargs(args, 0, 0)
  local v = redis.call('HMGET', keys[1], 'idle', 'deadline')
  if not v[1] then
    if redis.call('EXISTS', keys[1]) == 1 then
      E.fail('ADCACHE_WRONGTYPE', keys[1] .. ' is not a session record')
    end
    E.fail('ADCACHE_NOTFOUND', 'session ' .. keys[1] .. ' is unknown or expired')
  end
  local now = T.now_ms()
  local idle, deadline = tonumber(v[1]), tonumber(v[2])
  local expires = math.min(now + idle, deadline)
  redis.call('HSET', keys[1], 'touched', now)
  redis.call('PEXPIREAT', keys[1], expires)
  return {expires, deadline}
end

--- @function ac_session_delete
--- @summary Delete a session.
--- @keys session
--- @argv none
--- @reply integer: 1 when a session was deleted, 0 when there was none
--- @errors ADCACHE_ARITY ADCACHE_BADKEY
local function session_delete(keys, args)
  K.check(keys, {'session'})
  V.nargs(args, 0, 0)
  return redis.call('DEL', keys[1])
end

redis.register_function{function_name='ac_session_create', callback=session_create, flags={}, description='Create a session for a user with an idle TTL and an absolute lifetime.'}
redis.register_function{function_name='ac_session_get', callback=session_get, flags={'no-writes'}, description='Read a session; nil when it is unknown or expired.'}
redis.register_function{function_name='ac_session_touch', callback=session_touch, flags={}, description='Slide the idle TTL forward from now, never past the absolute lifetime.'}
redis.register_function{function_name='ac_session_delete', callback=session_delete, flags={}, description='Delete a session.'}
end

-- ==== domain: version (lua/version.lua.j2) ====
do
--@domain version: what is deployed. The renderer fills in the version and the sha256 of the
-- rendered source (computed with the hash itself zeroed).
local LIBRARY_VERSION = '0.1.0'
local LIBRARY_SHA256 = '3e234d18d90220747197776d5fccf7516f1b6ae1233047b8efa49ada60afa6e1'

--- @function ac_version
--- @flags no-writes
--- @summary The deployed library version and the sha256 of its rendered source.
--- @keys none
--- @argv none
--- @reply field/value array: name adcache, version <semver>, sha256 <hex>
local function version(keys, args)
  return {'name', 'adcache', 'version', LIBRARY_VERSION, 'sha256', LIBRARY_SHA256}
end

redis.register_function{function_name='ac_version', callback=version, flags={'no-writes'}, description='The deployed library version and the sha256 of its rendered source.'}
end
