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
local LIBRARY_SHA256 = '17d973f81f2e5b50f7fa7defcf595c9a7ef5992e9c51f6829b5b8846a64d0eb2'

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
