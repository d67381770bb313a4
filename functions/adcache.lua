#!lua name=adcache
-- adcache 0.1.0: generated from lua/ by `adcache render`. Do not edit: edit lua/ and re-render.

-- ==== helper: metrics (lua/_metrics.lua.j2) ====
--@helper metrics: adcache's own counters, per node. C.incr(name, n) adds to a Lua table local to
-- the library: it lives in the node's Lua state between calls, costs no Redis command, is not
-- replicated (a replica's table counts only what runs on the replica) and starts again from zero
-- when the library is (re)loaded or the server restarts. `ac_monitor_counters` reads it; the
-- client calls that on every node and sums. Count a business event once it is certain (after
-- validation), so a call that raises counts nothing.
--
-- Counter names (lower_case; the Prometheus exposition maps the families below to labels):
--   auctions_created, auctions_closed
--   bids_<outcome>            bids by outcome: bids_accepted, bids_won, bids_lost, bids_refused...
--   bids_lost_<reason>        lost bids by loss reason (OpenRTB loss-reason code or word)
--   caps_blocked              frequency caps that blocked an impression
--   budget_refused_<reason>   budget refusals by reason (exhausted, paced, ...)
--   stats_events              events counted by ac_stats_record
--   stats_duplicates          events dropped by ac_stats_record as retried deliveries
local C = {}
C.counts = {}

-- Add n (default 1) to a counter; counters spring into being at their first increment.
function C.incr(name, n)
  C.counts[name] = (C.counts[name] or 0) + (n or 1)
end

-- The counters as a flat name/value array, names sorted (stable replies for tests and diffs).
function C.flat()
  local names = {}
  for name in pairs(C.counts) do names[#names + 1] = name end
  table.sort(names)
  local out = {}
  for _, name in ipairs(names) do
    out[#out + 1] = name
    out[#out + 1] = C.counts[name]
  end
  return out
end

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

-- ==== helper: keys (lua/_keys.lua.j2) ====
--@helper keys: generated from lua/keyspace.yaml. Checks KEYS against the keyspace and builds
-- sibling keys of the same hash tag.

local K = {}
K.PREFIX = 'ad'
K.MAX_ID = 128
-- name -> {entity letter, Lua pattern of the suffix}
K.SPEC = {
  session = {'s', '^sess$'},
  stats_meta = {'c', '^st$'},
  stats_hour = {'c', '^st:h:[^{}]+$'},
  stats_day = {'c', '^st:d:[^{}]+$'},
  stats_reach_hour = {'c', '^st:rh:[^{}]+$'},
  stats_reach_day = {'c', '^st:rd:[^{}]+$'},
  stats_dedup = {'c', '^st:ev:[^{}]+$'},
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
function K.stats_meta(tag)
  return 'ad:{' .. tag .. '}:st'
end
function K.stats_hour(tag, hour)
  return 'ad:{' .. tag .. '}:st:h:' .. hour
end
function K.stats_day(tag, day)
  return 'ad:{' .. tag .. '}:st:d:' .. day
end
function K.stats_reach_hour(tag, hour)
  return 'ad:{' .. tag .. '}:st:rh:' .. hour
end
function K.stats_reach_day(tag, day)
  return 'ad:{' .. tag .. '}:st:rd:' .. day
end
function K.stats_dedup(tag, hour)
  return 'ad:{' .. tag .. '}:st:ev:' .. hour
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

-- ==== helper: money (lua/_money.lua.j2) ====
--@helper money: amounts are integer micro-units (1 currency unit = 1,000,000 micros). They never
-- pass through floating-point arithmetic beyond exact integers (< 2^53).

local M = {}
M.PER_UNIT = 1000000
-- Largest amount accepted in one argument: 999,999,999 units.
M.MAX = 999999999 * 1000000

-- A non-negative amount of micros given as a decimal integer string.
function M.amount(v, name)
  return V.int(v, name, 0, M.MAX)
end

-- A strictly positive amount.
function M.positive(v, name)
  return V.int(v, name, 1, M.MAX)
end

-- Integer reply of a stored amount (HGET returns strings or false).
function M.stored(v)
  return v and tonumber(v) or 0
end

-- ==== domain: monitor (lua/monitor.lua.j2) ====
do
--@domain monitor: adcache's own counters, per node (see lua/_metrics.lua.j2 for the names).


--- @function ac_monitor_counters
--- @flags no-writes
--- @summary This node's adcache counters since the library was loaded here.
--- @keys none
--- @argv none
--- @reply field/value array: counter name, integer count (names sorted; empty when nothing counted)
--- @errors ADCACHE_ARITY
local function monitor_counters(keys, args)
  if #keys ~= 0 then E.fail('ADCACHE_ARITY', 'expected no keys, got ' .. #keys) end
  V.nargs(args, 0, 0)
  return C.flat()
end

redis.register_function{function_name='ac_monitor_counters', callback=monitor_counters, flags={'no-writes'}, description='This node\'s adcache counters since the library was loaded here.'}
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

-- ==== domain: stats (lua/stats.lua.j2) ====
do
--@domain stats: campaign performance in real time. Hourly and daily buckets (hashes of integer
-- counters), HyperLogLogs of user ids for unique reach, and hourly sets of event ids to drop retried
-- deliveries.

--
-- Every stats call passes one key, the campaign's stats_meta, and derives its bucket keys from that
-- key's tag (K.stats_hour(tag, ...) ...): the buckets are named by the server's date in the
-- configured UTC offset (T.ymd / T.ymdh of T.now_ms()), which the client does not know, and a
-- summary over N days touches up to 3N keys. All of them share the campaign's hash tag.
--
-- Bucket fields are integers: impressions, clicks, conversions, cost_micros, revenue_micros.
-- Sums over many buckets can pass 2^53 (the last exact Lua integer), so summary and series reply
-- with the sums as decimal strings, added exactly in two limbs (the low 9 digits and the rest).
--
-- Summary and series only read, yet are not flagged no-writes: they need PFCOUNT, which Redis
-- marks may-replicate (it may cache the estimate inside the HyperLogLog) and refuses in read-only
-- functions. So they go through FCALL to the primary, not to replicas.
local FIELDS = {'impressions', 'clicks', 'conversions', 'cost_micros', 'revenue_micros'}
local MAX_EVENTS = 1000
local MAX_COUNT = 1000000000
local MAX_OFFSET_S = 86399
local MAX_RETENTION_S = 400 * 86400
local MAX_DEDUP_S = 86400
local MAX_DAYS = 90
local MAX_HOURS = 168
local LIMB = 1000000000
local UNITS = {hour = true, day = true}

local S = {}

function S.offset(v)
  return V.int(v, 'offset_s', -MAX_OFFSET_S, MAX_OFFSET_S)
end

-- Start (ms) of the UTC-offset hour / day holding `ms`, and its label.
function S.bucket(unit, ms, off)
  if unit == 'hour' then return T.period_start(ms, 'hour', off), T.ymdh(ms, off) end
  return T.period_start(ms, 'day', off), T.ymd(ms, off)
end

-- The n buckets ending with the current one, oldest first: list of {label, counters key, reach key}.
function S.range(tag, unit, n, now, off)
  local step = unit == 'hour' and T.HOUR or T.DAY
  local start = S.bucket(unit, now, off)
  local out = {}
  for i = n - 1, 0, -1 do
    local _, label = S.bucket(unit, start - i * step, off)
    if unit == 'hour' then
      out[#out + 1] = {label, K.stats_hour(tag, label), K.stats_reach_hour(tag, label)}
    else
      out[#out + 1] = {label, K.stats_day(tag, label), K.stats_reach_day(tag, label)}
    end
  end
  return out
end

function S.range_args(args)
  V.nargs(args, 3, 3)
  local unit = V.enum(args[1], 'unit', UNITS)
  local max = unit == 'hour' and MAX_HOURS or MAX_DAYS
  local n = V.pos(args[2], 'n')
  if n > max then E.fail('ADCACHE_LIMIT', 'at most ' .. max .. ' ' .. unit .. 's per call') end
  return unit, n, S.offset(args[3])
end

-- A stored counter as a non-negative decimal string ('0' when absent).
function S.stored(v, key)
  if not v then return '0' end
  if not string.match(v, '^%d+$') then
    E.fail('ADCACHE_WRONGTYPE', key .. ' holds a non-integer counter: ' .. v)
  end
  return v
end

-- Exact sum of decimal strings: each value is split into a high part and 9 low digits, both exact
-- doubles, so the total is exact far beyond 2^53.
function S.sum_new() return {0, 0} end

function S.sum_add(acc, s)
  if #s <= 9 then
    acc[2] = acc[2] + tonumber(s)
  else
    acc[1] = acc[1] + tonumber(string.sub(s, 1, -10))
    acc[2] = acc[2] + tonumber(string.sub(s, -9))
  end
end

function S.sum_str(acc)
  local hi = acc[1] + math.floor(acc[2] / LIMB)
  local lo = acc[2] % LIMB
  if hi > 0 then return string.format('%d%09d', hi, lo) end
  return string.format('%d', lo)
end

function S.wrong_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    E.fail('ADCACHE_WRONGTYPE', key .. ' is a ' .. t .. ', not a ' .. want)
  end
end

--- @function ac_stats_record
--- @summary Record a batch of events in the campaign's current hour and day buckets, once each.
--- @keys stats_meta
--- @argv offset_s hour_retention_s day_retention_s dedup_s
---   [impressions clicks conversions cost_micros revenue_micros user_id event_id]...
---   (7 values per event, at most 1000 events; user_id and event_id may be empty strings)
--- @reply array: recorded events, duplicates dropped, hour label YYYYMMDDHH, day label YYYYMMDD
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE
local function stats_record(keys, args)
  local tag = K.check(keys, {'stats_meta'})
  V.nargs(args, 4)
  local off = S.offset(args[1])
  local hour_ttl = V.pos(args[2], 'hour_retention_s', MAX_RETENTION_S) * 1000
  local day_ttl = V.pos(args[3], 'day_retention_s', MAX_RETENTION_S) * 1000
  local dedup = V.uint(args[4], 'dedup_s', MAX_DEDUP_S) * 1000
  if (#args - 4) % 7 ~= 0 then
    E.fail('ADCACHE_ARITY', 'events come as 7 values each (impressions clicks conversions '
      .. 'cost_micros revenue_micros user_id event_id)')
  end
  local n = (#args - 4) / 7
  if n > MAX_EVENTS then E.fail('ADCACHE_LIMIT', 'at most ' .. MAX_EVENTS .. ' events per call') end
  local events = {}
  local bound = {0, 0, 0, 0, 0}
  for e = 1, n do
    local b = 4 + (e - 1) * 7
    local ev = {}
    for f = 1, 3 do ev[f] = V.uint(args[b + f], FIELDS[f], MAX_COUNT) end
    ev[4] = M.amount(args[b + 4], 'cost_micros')
    ev[5] = M.amount(args[b + 5], 'revenue_micros')
    for f = 1, 5 do
      -- Sums stay exact Lua integers: refuse a batch whose totals could leave that range.
      bound[f] = bound[f] + ev[f]
      if bound[f] > V.MAX_INT then
        E.fail('ADCACHE_LIMIT', FIELDS[f] .. ' of one batch must add up to at most '
          .. string.format('%d', V.MAX_INT))
      end
    end
    ev.user = V.str(args[b + 6], 'user_id')
    if ev.user ~= '' then V.id(ev.user, 'user_id') end
    ev.id = V.str(args[b + 7], 'event_id')
    if ev.id ~= '' then V.id(ev.id, 'event_id') end
    events[e] = ev
  end

  local now = T.now_ms()
  local hour_start, hour = S.bucket('hour', now, off)
  local _, day = S.bucket('day', now, off)
  local hkey, dkey = K.stats_hour(tag, hour), K.stats_day(tag, day)
  local rhkey, rdkey = K.stats_reach_hour(tag, hour), K.stats_reach_day(tag, day)
  -- A key of the keyspace holding another type would fail midway: check before the first write.
  S.wrong_type(keys[1], 'hash')
  S.wrong_type(hkey, 'hash')
  S.wrong_type(dkey, 'hash')
  S.wrong_type(rhkey, 'string')
  S.wrong_type(rdkey, 'string')

  -- De-dup buckets are UTC hours whatever the offset, so callers with different offsets agree.
  -- An id recorded at t sits in the set of hour(t), kept until that hour's end + dedup_s; a retry
  -- at t2 <= t + dedup_s looks in every hour from hour(t2 - dedup_s) to hour(t2).
  local seen_keys = {}
  local cur_ev
  if dedup > 0 then
    local first = T.period_start(now - dedup, 'hour', 0)
    local last = T.period_start(now, 'hour', 0)
    for h = first, last - T.HOUR, T.HOUR do
      seen_keys[#seen_keys + 1] = K.stats_dedup(tag, T.ymdh(h, 0))
    end
    cur_ev = K.stats_dedup(tag, T.ymdh(now, 0))
    for _, k in ipairs(seen_keys) do S.wrong_type(k, 'set') end
    S.wrong_type(cur_ev, 'set')
  end

  local sums = {0, 0, 0, 0, 0}
  local users = {}
  local recorded, dups, added = 0, 0, 0
  for _, ev in ipairs(events) do
    local dup = false
    if dedup > 0 and ev.id ~= '' then
      for _, k in ipairs(seen_keys) do
        if redis.call('SISMEMBER', k, ev.id) == 1 then dup = true break end
      end
      if not dup then
        if redis.call('SADD', cur_ev, ev.id) == 0 then dup = true else added = added + 1 end
      end
    end
    if dup then
      dups = dups + 1
    else
      recorded = recorded + 1
      for f = 1, 5 do sums[f] = sums[f] + ev[f] end
      if ev.user ~= '' then users[#users + 1] = ev.user end
    end
  end
  if added > 0 then
    redis.call('PEXPIREAT', cur_ev, T.period_end(now, 'hour', 0) + dedup)
  end

  -- Anchored expiry: the end of the bucket plus the retention, the same at every record, so an
  -- increment never extends a bucket's life.
  local hour_exp = hour_start + T.HOUR + hour_ttl
  local day_exp = T.period_end(now, 'day', off) + day_ttl
  local wrote = false
  for f = 1, 5 do
    if sums[f] > 0 then
      -- As a '%d' string: Redis would print a large Lua number in exponent form.
      local by = string.format('%d', sums[f])
      redis.call('HINCRBY', hkey, FIELDS[f], by)
      redis.call('HINCRBY', dkey, FIELDS[f], by)
      wrote = true
    end
  end
  if wrote then
    redis.call('PEXPIREAT', hkey, hour_exp)
    redis.call('PEXPIREAT', dkey, day_exp)
  end
  if #users > 0 then
    redis.call('PFADD', rhkey, unpack(users))
    redis.call('PFADD', rdkey, unpack(users))
    redis.call('PEXPIREAT', rhkey, hour_exp)
    redis.call('PEXPIREAT', rdkey, day_exp)
  end
  if recorded + dups > 0 then
    redis.call('HSETNX', keys[1], 'first_ms', now)
    redis.call('HSET', keys[1], 'last_ms', now)
    redis.call('HINCRBY', keys[1], 'events', recorded)
    redis.call('HINCRBY', keys[1], 'duplicates', dups)
    -- The owner key outlives the last daily bucket it anchors.
    redis.call('PEXPIREAT', keys[1], day_exp)
  end
  C.incr('stats_events', recorded)
  C.incr('stats_duplicates', dups)
  return {recorded, dups, hour, day}
end

--- @function ac_stats_summary
--- @summary Totals and unique reach of the last N hours or days (the current one included).
--- @keys stats_meta
--- @argv unit (hour|day) n (days <= 90, hours <= 168) offset_s
--- @reply field/value array: unit, from, to (bucket labels), buckets, impressions, clicks,
---   conversions, cost_micros, revenue_micros (decimal strings, exact), reach (integer, HyperLogLog
---   estimate over the range), last_ms (last record, 0 if none), now_ms
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE
local function stats_summary(keys, args)
  local tag = K.check(keys, {'stats_meta'})
  local unit, n, off = S.range_args(args)
  local now = T.now_ms()
  local range = S.range(tag, unit, n, now, off)
  local acc = {}
  for f = 1, 5 do acc[f] = S.sum_new() end
  local reach_keys = {}
  for _, b in ipairs(range) do
    local v = redis.call('HMGET', b[2], unpack(FIELDS))
    for f = 1, 5 do S.sum_add(acc[f], S.stored(v[f], b[2])) end
    reach_keys[#reach_keys + 1] = b[3]
  end
  local reach = redis.call('PFCOUNT', unpack(reach_keys))
  local last = redis.call('HGET', keys[1], 'last_ms')
  local out = {'unit', unit, 'from', range[1][1], 'to', range[#range][1], 'buckets', n}
  for f = 1, 5 do
    out[#out + 1] = FIELDS[f]
    out[#out + 1] = S.sum_str(acc[f])
  end
  out[#out + 1] = 'reach'
  out[#out + 1] = reach
  out[#out + 1] = 'last_ms'
  out[#out + 1] = last and tonumber(last) or 0
  out[#out + 1] = 'now_ms'
  out[#out + 1] = now
  return out
end

--- @function ac_stats_series
--- @summary Per-hour or per-day values of the last N buckets, oldest first, for dashboards.
--- @keys stats_meta
--- @argv unit (hour|day) n (days <= 90, hours <= 168) offset_s
--- @reply flat array, 7 values per bucket: label, impressions, clicks, conversions, cost_micros,
---   revenue_micros (decimal strings), reach (integer estimate of the bucket)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE
local function stats_series(keys, args)
  local tag = K.check(keys, {'stats_meta'})
  local unit, n, off = S.range_args(args)
  local range = S.range(tag, unit, n, T.now_ms(), off)
  local out = {}
  for _, b in ipairs(range) do
    local v = redis.call('HMGET', b[2], unpack(FIELDS))
    out[#out + 1] = b[1]
    for f = 1, 5 do out[#out + 1] = S.stored(v[f], b[2]) end
    out[#out + 1] = redis.call('PFCOUNT', b[3])
  end
  return out
end

redis.register_function{function_name='ac_stats_record', callback=stats_record, flags={}, description='Record a batch of events in the campaign\'s current hour and day buckets, once each.'}
redis.register_function{function_name='ac_stats_summary', callback=stats_summary, flags={}, description='Totals and unique reach of the last N hours or days (the current one included).'}
redis.register_function{function_name='ac_stats_series', callback=stats_series, flags={}, description='Per-hour or per-day values of the last N buckets, oldest first, for dashboards.'}
end

-- ==== domain: version (lua/version.lua.j2) ====
do
--@domain version: what is deployed. The renderer fills in the version and the sha256 of the
-- rendered source (computed with the hash itself zeroed).
local LIBRARY_VERSION = '0.1.0'
local LIBRARY_SHA256 = '0a78b2cdfbc5db9e7b3438b63342249ade86f33daad523e30c00c6344857304a'

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
