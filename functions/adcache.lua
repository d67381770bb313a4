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
  session_history = {'s', '^hist$'},
  user_sessions = {'u', '^sessions$'},
  profile = {'u', '^prof$'},
  user_segments = {'u', '^segs$'},
  segment_members = {'g', '^members$'},
  segment_expiry = {'g', '^expiry$'},
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
function K.session_history(tag)
  return 'ad:{' .. tag .. '}:hist'
end
function K.user_sessions(tag)
  return 'ad:{' .. tag .. '}:sessions'
end
function K.profile(tag)
  return 'ad:{' .. tag .. '}:prof'
end
function K.user_segments(tag)
  return 'ad:{' .. tag .. '}:segs'
end
function K.segment_members(tag)
  return 'ad:{' .. tag .. '}:members'
end
function K.segment_expiry(tag)
  return 'ad:{' .. tag .. '}:expiry'
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

-- ==== domain: profile (lua/profile.lua.j2) ====
do
--@domain profile: user profiles with an idle TTL, field-level patches, compare-and-set on a version
-- and atomic behaviour-score increments.

-- Record (hash) under the user's tag:
--   v        version: 1 on creation, +1 on every set or patch (activity does not bump it: score
--            increments commute, so they must not make an unrelated patch conflict)
--   score    behaviour score, integer in thousandths (75.5 points = 75500); never a float
--   last     last activity (ms)        created / updated   first write / last set or patch (ms)
--   idle     idle TTL (ms): the key expires that long after the last set, patch or activity
--   segment  the primary segment label   interests   comma-separated tokens
--   d.<name> demographics                x.<name>    extra attributes
local DEFAULT_IDLE_MS = 30 * T.DAY
local MAX_IDLE_MS = 400 * T.DAY
local MAX_FIELDS = 128
local MAX_VALUE = 1024
local MAX_NAME = 64
local MAX_INTERESTS = 64
local MAX_TOKEN = 64
local MAX_DELTA = 1000000000000

local P = {}

-- Interests: comma-separated tokens, each 1..64 bytes with no control character; duplicates are
-- dropped (first one kept). Returns the normalized string.
function P.interests(v)
  if v == '' then return '' end
  local out, seen = {}, {}
  for tok in string.gmatch(v .. ',', '([^,]*),') do
    if tok == '' or #tok > MAX_TOKEN or string.find(tok, '%c') then
      E.fail('ADCACHE_BADARG', 'interests must be comma-separated tokens of 1 to ' .. MAX_TOKEN
        .. ' bytes without control characters')
    end
    if not seen[tok] then
      seen[tok] = true
      out[#out + 1] = tok
    end
  end
  if #out > MAX_INTERESTS then
    E.fail('ADCACHE_LIMIT', 'at most ' .. MAX_INTERESTS .. ' interests')
  end
  return table.concat(out, ',')
end

-- Field/value pairs of set and patch, from args[first..]. Returns a list of {field, value} with
-- value '' meaning "absent" (patch deletes the field, set leaves it out). Reserved bookkeeping
-- fields (v, created, updated, idle) are refused.
function P.fields(args, first)
  local n = #args - first + 1
  if n % 2 ~= 0 then E.fail('ADCACHE_ARITY', 'fields must come as name/value pairs') end
  if n / 2 > MAX_FIELDS then E.fail('ADCACHE_LIMIT', 'at most ' .. MAX_FIELDS .. ' fields per call') end
  local out, seen = {}, {}
  for i = first, #args, 2 do
    local f, v = V.str(args[i], 'field name'), V.str(args[i + 1], 'field value', MAX_VALUE)
    if seen[f] then E.fail('ADCACHE_BADARG', 'field ' .. f .. ' is given twice') end
    seen[f] = true
    if f == 'score' then
      if v == '' then E.fail('ADCACHE_BADARG', 'score cannot be removed') end
      v = string.format('%d', V.int(v, 'score'))
    elseif f == 'last' then
      if v ~= '' then v = string.format('%d', V.uint(v, 'last')) end
    elseif f == 'segment' then
      if v ~= '' then V.id(v, 'segment') end
    elseif f == 'interests' then
      v = P.interests(v)
    else
      local kind, name = string.match(f, '^([dx])%.(.+)$')
      if not kind then
        E.fail('ADCACHE_BADARG', 'unknown profile field ' .. f
          .. ' (score, last, segment, interests, d.<name>, x.<name>)')
      end
      if #name > MAX_NAME or string.find(name, '[%c{}]') then
        E.fail('ADCACHE_BADARG', 'field name ' .. f .. ' must be at most ' .. MAX_NAME
          .. ' bytes without braces or control characters')
      end
    end
    out[#out + 1] = {f, v}
  end
  return out
end

-- The stored version (0 when there is no profile); refuses a key the library did not write.
function P.version(key)
  local v = redis.call('HGET', key, 'v')
  if v then return tonumber(v) end
  if redis.call('EXISTS', key) == 1 then
    E.fail('ADCACHE_WRONGTYPE', key .. ' is not a profile record')
  end
  return 0
end

-- expected_version: '-' for any, else an integer (0 = the profile must not exist).
function P.expect(arg, current)
  if arg == '-' then return end
  local want = V.uint(arg, 'expected_version')
  if want ~= current then
    E.fail('ADCACHE_CONFLICT', 'profile version is ' .. current .. ', expected ' .. want)
  end
end

-- idle_ttl_ms: 0 keeps the stored idle TTL (the default for a new profile).
function P.idle(arg, key)
  local idle = V.uint(arg, 'idle_ttl_ms', MAX_IDLE_MS)
  if idle > 0 then return idle end
  return tonumber(redis.call('HGET', key, 'idle')) or DEFAULT_IDLE_MS
end

function P.write(key, version, now, idle, fields, replace)
  local created = redis.call('HGET', key, 'created') or now
  local score = redis.call('HGET', key, 'score') or '0'
  if replace then
    redis.call('DEL', key)
  end
  local hset = {'v', version, 'created', created, 'updated', now, 'idle', idle}
  if replace or version == 1 then
    hset[#hset + 1] = 'score'
    hset[#hset + 1] = replace and '0' or score
  end
  local hdel = {}
  for _, p in ipairs(fields) do
    if p[2] == '' then
      hdel[#hdel + 1] = p[1]
    else
      hset[#hset + 1] = p[1]
      hset[#hset + 1] = p[2]
    end
  end
  if #hdel > 0 and not replace then redis.call('HDEL', key, unpack(hdel)) end
  redis.call('HSET', key, unpack(hset))
  redis.call('PEXPIRE', key, idle)
  return {version, now + idle}
end

--- @function ac_profile_get
--- @flags no-writes
--- @summary Read a profile; nil when it is unknown or expired.
--- @keys profile
--- @argv none
--- @reply field/value array of the record plus pttl (ms), or nil
--- @errors ADCACHE_ARITY ADCACHE_BADKEY
local function profile_get(keys, args)
  K.check(keys, {'profile'})
  V.nargs(args, 0, 0)
  local flat = redis.call('HGETALL', keys[1])
  if #flat == 0 then return false end
  flat[#flat + 1] = 'pttl'
  flat[#flat + 1] = redis.call('PTTL', keys[1])
  return flat
end

--- @function ac_profile_set
--- @summary Replace a whole profile (score reset unless given), optionally compare-and-set.
--- @keys profile
--- @argv idle_ttl_ms expected_version [field value]... -- idle_ttl_ms 0 keeps the stored idle TTL
---   (30 days for a new profile); expected_version '-' for any, 0 for "must not exist"; fields are
---   score, last, segment, interests, d.<name>, x.<name>; an empty value leaves the field out
--- @reply array: version, expires_at_ms
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_CONFLICT ADCACHE_WRONGTYPE
local function profile_set(keys, args)
  K.check(keys, {'profile'})
  V.nargs(args, 2)
  local fields = P.fields(args, 3)
  local current = P.version(keys[1])
  local idle = P.idle(args[1], keys[1])
  P.expect(args[2], current)
  return P.write(keys[1], current + 1, T.now_ms(), idle, fields, true)
end

--- @function ac_profile_patch
--- @summary Change some fields of a profile in one call (creates it when absent), optionally
---   compare-and-set.
--- @keys profile
--- @argv idle_ttl_ms expected_version [field value]... -- as for ac_profile_set; an empty value
---   deletes the field
--- @reply array: version, expires_at_ms
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_CONFLICT ADCACHE_WRONGTYPE
local function profile_patch(keys, args)
  K.check(keys, {'profile'})
  V.nargs(args, 2)
  local fields = P.fields(args, 3)
  local current = P.version(keys[1])
  local idle = P.idle(args[1], keys[1])
  P.expect(args[2], current)
  return P.write(keys[1], current + 1, T.now_ms(), idle, fields, false)
end

--- @function ac_profile_activity
--- @summary Record activity: add to the behaviour score, set last activity to now and refresh the
---   idle TTL, atomically.
--- @keys profile
--- @argv score_delta idle_ttl_ms missing -- score_delta in thousandths (may be negative or 0);
---   idle_ttl_ms 0 keeps the stored idle TTL; missing is create (an unknown user gets a minimal
---   profile: version 1, score = delta) or fail (ADCACHE_NOTFOUND)
--- @reply array: score, last_ms, version, expires_at_ms, created (1 when this call created it)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_NOTFOUND ADCACHE_WRONGTYPE
local function profile_activity(keys, args)
  K.check(keys, {'profile'})
  V.nargs(args, 3, 3)
  local delta = V.int(args[1], 'score_delta', -MAX_DELTA, MAX_DELTA)
  local missing = V.enum(args[3], 'missing', {create = true, fail = true})
  local current = P.version(keys[1])
  local idle = P.idle(args[2], keys[1])
  if current == 0 and missing == 'fail' then
    E.fail('ADCACHE_NOTFOUND', 'profile ' .. keys[1] .. ' is unknown or expired')
  end
  local score = (tonumber(redis.call('HGET', keys[1], 'score')) or 0) + delta
  if score > V.MAX_INT or score < -V.MAX_INT then
    E.fail('ADCACHE_BADARG', 'score would leave the range +-' .. string.format('%d', V.MAX_INT))
  end
  local now = T.now_ms()
  local created = 0
  if current == 0 then
    created = 1
    redis.call('HSET', keys[1], 'v', 1, 'created', now, 'updated', now, 'score', 0)
    current = 1
  end
  score = redis.call('HINCRBY', keys[1], 'score', delta)
  redis.call('HSET', keys[1], 'last', now, 'idle', idle)
  redis.call('PEXPIRE', keys[1], idle)
  return {score, now, current, now + idle, created}
end

redis.register_function{function_name='ac_profile_get', callback=profile_get, flags={'no-writes'}, description='Read a profile; nil when it is unknown or expired.'}
redis.register_function{function_name='ac_profile_set', callback=profile_set, flags={}, description='Replace a whole profile (score reset unless given), optionally compare-and-set.'}
redis.register_function{function_name='ac_profile_patch', callback=profile_patch, flags={}, description='Change some fields of a profile in one call (creates it when absent), optionally compare-and-set.'}
redis.register_function{function_name='ac_profile_activity', callback=profile_activity, flags={}, description='Record activity: add to the behaviour score, set last activity to now and refresh the idle TTL, atomically.'}
end

-- ==== domain: segment (lua/segment.lua.j2) ====
do
--@domain segment: audience segment memberships, each with its own expiry, kept on two sides.

-- User side, tag {u:<id>}: user_segments (zset segment -> expiry ms). It is the authority: targeting
-- reads it. Segment side, tag {g:<id>}: segment_members (zset user -> added ms, for newest-first
-- pages) and segment_expiry (zset user -> expiry ms, for pruning). A client adds the segment side
-- first and removes the user side first, so the segment side always lists every membership the
-- user side holds (plus, after a crash between the two calls, one the retry or the expiry removes).
-- Expired members are never returned; writes prune them (the user side fully, the segment side in
-- bounded batches). Every key expires at its latest member expiry.
local MAX_TTL_MS = 400 * T.DAY
local DEFAULT_MAX_SEGMENTS = 256
local HARD_MAX_SEGMENTS = 4096
local HARD_MAX_MEMBERS = 10000000
local PRUNE_BATCH = 100
local MAX_PAGE = 1000

local S = {}

-- Expire `key` at its highest score (it then dies with its last member); delete it when empty.
function S.expire_at_max(key)
  local top = redis.call('ZRANGE', key, 0, 0, 'REV', 'WITHSCORES')
  if #top == 0 then return end
  redis.call('PEXPIREAT', key, tonumber(top[2]))
end

-- Drop up to `limit` expired members from the segment side (both zsets).
function S.prune_segment(members, expiry, now, limit)
  local gone = redis.call('ZRANGE', expiry, '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
  if #gone > 0 then
    redis.call('ZREM', expiry, unpack(gone))
    redis.call('ZREM', members, unpack(gone))
  end
  return #gone
end

-- Both segment-side zsets expire at the latest membership expiry.
function S.sync_ttl(members, expiry)
  S.expire_at_max(expiry)
  local pt = redis.call('PEXPIRETIME', expiry)
  if pt > 0 then redis.call('PEXPIREAT', members, pt) end
end

function S.check_zset(key)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'zset' and t ~= 'none' then
    E.fail('ADCACHE_WRONGTYPE', key .. ' is not a sorted set')
  end
end

--- @function ac_segment_add
--- @summary Segment side of a membership: add a user (or refresh its expiry), prune expired ones.
--- @keys segment_members segment_expiry
--- @argv user_id ttl_ms max_members -- the membership expires ttl_ms from now; max_members bounds
---   the segment (up to 10,000,000); re-adding keeps the time added and sets the new expiry
--- @reply array: expires_at_ms, added (1 when the user was not a member), members (count)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE
local function segment_add(keys, args)
  K.check(keys, {'segment_members', 'segment_expiry'})
  V.nargs(args, 3, 3)
  local user = V.id(args[1], 'user_id')
  local ttl = V.pos(args[2], 'ttl_ms', MAX_TTL_MS)
  local max = V.pos(args[3], 'max_members', HARD_MAX_MEMBERS)
  S.check_zset(keys[1])
  S.check_zset(keys[2])
  local now = T.now_ms()
  local old = tonumber(redis.call('ZSCORE', keys[2], user))
  local is_new = not old or old <= now
  if is_new then
    -- A full segment refuses before it writes (a pruned batch would not be undone by the error).
    local live = redis.call('ZCOUNT', keys[2], '(' .. now, '+inf')
    if live >= max then
      E.fail('ADCACHE_LIMIT', 'segment has ' .. live .. ' members, the limit is ' .. max)
    end
  end
  S.prune_segment(keys[1], keys[2], now, PRUNE_BATCH)
  local expires = now + ttl
  -- A refresh keeps the time added (ZADD NX); a new or lapsed membership starts now.
  if is_new then
    redis.call('ZADD', keys[1], now, user)
  else
    redis.call('ZADD', keys[1], 'NX', now, user)
  end
  redis.call('ZADD', keys[2], expires, user)
  S.sync_ttl(keys[1], keys[2])
  return {expires, is_new and 1 or 0, redis.call('ZCARD', keys[2])}
end

--- @function ac_segment_remove
--- @summary Segment side of a membership: remove a user (idempotent), prune expired ones.
--- @keys segment_members segment_expiry
--- @argv user_id
--- @reply integer: 1 when a live membership was removed, else 0
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_WRONGTYPE
local function segment_remove(keys, args)
  K.check(keys, {'segment_members', 'segment_expiry'})
  V.nargs(args, 1, 1)
  local user = V.id(args[1], 'user_id')
  S.check_zset(keys[1])
  S.check_zset(keys[2])
  local now = T.now_ms()
  local exp = tonumber(redis.call('ZSCORE', keys[2], user))
  redis.call('ZREM', keys[1], user)
  redis.call('ZREM', keys[2], user)
  S.prune_segment(keys[1], keys[2], now, PRUNE_BATCH)
  S.sync_ttl(keys[1], keys[2])
  return (exp and exp > now) and 1 or 0
end

--- @function ac_segment_members
--- @flags no-writes
--- @summary A page of a segment's live members, newest first.
--- @keys segment_members segment_expiry
--- @argv cursor count -- cursor '' for the first page, else the next_cursor of the previous page;
---   count 1..1000
--- @reply array: next_cursor ('' after the last page), then user, added_ms, expires_at_ms per member
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_WRONGTYPE
local function segment_members(keys, args)
  K.check(keys, {'segment_members', 'segment_expiry'})
  V.nargs(args, 2, 2)
  local cursor = V.str(args[1], 'cursor', 160)
  local count = V.pos(args[2], 'count', MAX_PAGE)
  -- The cursor is the (added_ms, user) of the last member returned. Its rank in newest-first
  -- order is recomputed from the scores, so it stays exact when members come and go between pages.
  local rank = 0
  if cursor ~= '' then
    local s, u = string.match(cursor, '^(%d+):(.+)$')
    if not s then E.fail('ADCACHE_BADARG', 'cursor is malformed: ' .. cursor) end
    rank = redis.call('ZCOUNT', keys[1], '(' .. s, '+inf')
    for _, m in ipairs(redis.call('ZRANGE', keys[1], s, s, 'BYSCORE')) do
      if m >= u then rank = rank + 1 end  -- equal scores run in reverse lexical order
    end
  end
  local now = T.now_ms()
  local out = {''}
  local last_user, last_score = nil, nil
  local scanned = 0
  while #out - 1 < count * 3 and scanned < count * 10 do
    local batch = redis.call('ZRANGE', keys[1], rank, rank + count - 1, 'REV', 'WITHSCORES')
    if #batch == 0 then break end
    local users = {}
    for i = 1, #batch, 2 do users[#users + 1] = batch[i] end
    local exps = redis.call('ZMSCORE', keys[2], unpack(users))
    for i = 1, #users do
      rank = rank + 1
      scanned = scanned + 1
      last_user, last_score = users[i], batch[2 * i]
      local e = tonumber(exps[i])
      if e and e > now then
        out[#out + 1] = users[i]
        out[#out + 1] = batch[2 * i]
        out[#out + 1] = string.format('%d', e)
        if (#out - 1) / 3 == count then break end
      end
    end
    if (#out - 1) / 3 == count then break end
  end
  if last_user and redis.call('ZCARD', keys[1]) > rank then
    out[1] = last_score .. ':' .. last_user
  end
  return out
end

--- @function ac_segment_join
--- @summary User side of a membership: record the segment with its expiry, prune expired ones.
--- @keys user_segments
--- @argv segment_id expires_at_ms max_segments -- expires_at_ms as returned by ac_segment_add;
---   max_segments bounds the user's live memberships (up to 4096)
--- @reply array: joined (1 new, 0 refreshed, -1 already expired: nothing written), segments (count)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE
local function segment_join(keys, args)
  K.check(keys, {'user_segments'})
  V.nargs(args, 3, 3)
  local seg = V.id(args[1], 'segment_id')
  local expires = V.pos(args[2], 'expires_at_ms')
  local max = V.pos(args[3], 'max_segments', HARD_MAX_SEGMENTS)
  S.check_zset(keys[1])
  local now = T.now_ms()
  if expires > now + MAX_TTL_MS then
    E.fail('ADCACHE_BADARG', 'expires_at_ms is more than 400 days ahead')
  end
  if expires <= now then return {-1, redis.call('ZCOUNT', keys[1], '(' .. now, '+inf')} end
  local old = tonumber(redis.call('ZSCORE', keys[1], seg))
  local is_new = not old or old <= now
  if is_new then
    local live = redis.call('ZCOUNT', keys[1], '(' .. now, '+inf')
    if live >= max then
      E.fail('ADCACHE_LIMIT', 'user has ' .. live .. ' segments, the limit is ' .. max)
    end
  end
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now)
  redis.call('ZADD', keys[1], expires, seg)
  S.expire_at_max(keys[1])
  return {is_new and 1 or 0, redis.call('ZCARD', keys[1])}
end

--- @function ac_segment_leave
--- @summary User side of a membership: drop the segment (idempotent), prune expired ones.
--- @keys user_segments
--- @argv segment_id
--- @reply integer: 1 when a live membership was dropped, else 0
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_WRONGTYPE
local function segment_leave(keys, args)
  K.check(keys, {'user_segments'})
  V.nargs(args, 1, 1)
  local seg = V.id(args[1], 'segment_id')
  S.check_zset(keys[1])
  local now = T.now_ms()
  local old = tonumber(redis.call('ZSCORE', keys[1], seg))
  redis.call('ZREM', keys[1], seg)
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now)
  S.expire_at_max(keys[1])
  return (old and old > now) and 1 or 0
end

--- @function ac_segment_of
--- @flags no-writes
--- @summary A user's live segment memberships, soonest expiry first.
--- @keys user_segments
--- @argv none
--- @reply array: segment_id, expires_at_ms per live membership
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_WRONGTYPE
local function segment_of(keys, args)
  K.check(keys, {'user_segments'})
  V.nargs(args, 0, 0)
  -- (a foreign key type fails in ZRANGE itself: WRONGTYPE, read as CorruptStateError)
  local flat = redis.call('ZRANGE', keys[1], '(' .. T.now_ms(), '+inf', 'BYSCORE', 'WITHSCORES')
  return flat
end

redis.register_function{function_name='ac_segment_add', callback=segment_add, flags={}, description='Segment side of a membership: add a user (or refresh its expiry), prune expired ones.'}
redis.register_function{function_name='ac_segment_remove', callback=segment_remove, flags={}, description='Segment side of a membership: remove a user (idempotent), prune expired ones.'}
redis.register_function{function_name='ac_segment_members', callback=segment_members, flags={'no-writes'}, description='A page of a segment\'s live members, newest first.'}
redis.register_function{function_name='ac_segment_join', callback=segment_join, flags={}, description='User side of a membership: record the segment with its expiry, prune expired ones.'}
redis.register_function{function_name='ac_segment_leave', callback=segment_leave, flags={}, description='User side of a membership: drop the segment (idempotent), prune expired ones.'}
redis.register_function{function_name='ac_segment_of', callback=segment_of, flags={'no-writes'}, description='A user\'s live segment memberships, soonest expiry first.'}
end

-- ==== domain: session (lua/session.lua.j2) ====
do
--@domain session: browsing sessions with a sliding idle TTL inside an absolute lifetime.

-- Record (hash): user, created, deadline (absolute end, ms), idle (ms), touched (ms),
-- a.<name> = attribute value, imps = impressions recorded, i.<campaign> = impressions per campaign.
-- The key's PEXPIREAT is always min(touched + idle, deadline). The optional second key, the
-- session's context history (a list, newest first), always carries the same PEXPIREAT.
local MAX_TTL_MS = 30 * T.DAY
local MAX_ATTRS = 64
local MAX_ATTR_VALUE = 4096
local MAX_HISTORY = 500
local MAX_TOKENS = 16
local MAX_TOKEN = 64
local MAX_REFERRER = 512
local MAX_TOP = 100
local MAX_CAMPAIGNS = 256
-- A user's session index: each entry's score bounds the session's end from above. The index
-- call runs just before the session is created, so its clock reads a little earlier: the slack
-- keeps the bound above the session's real deadline.
local INDEX_SLACK_MS = 5 * T.SECOND
local DEFAULT_MAX_SESSIONS = 256
local HARD_MAX_SESSIONS = 4096
local MAX_REMOVE = 1000

local SS = {}

-- The session's idle and deadline; NotFound when it is gone, WrongType when the key is foreign.
function SS.live(key)
  local v = redis.call('HMGET', key, 'idle', 'deadline')
  if not v[1] then
    if redis.call('EXISTS', key) == 1 then
      E.fail('ADCACHE_WRONGTYPE', key .. ' is not a session record')
    end
    E.fail('ADCACHE_NOTFOUND', 'session ' .. key .. ' is unknown or expired')
  end
  return tonumber(v[1]), tonumber(v[2])
end

function SS.check_list(key)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'list' and t ~= 'none' then
    E.fail('ADCACHE_WRONGTYPE', key .. ' is not a session history')
  end
end

-- Context tokens (categories, keywords): 1..64 bytes, no comma or control character. Duplicates
-- within one entry are dropped, so a token counts once per entry.
function SS.tokens(args, first, last, what)
  if last - first + 1 > MAX_TOKENS then
    E.fail('ADCACHE_LIMIT', 'at most ' .. MAX_TOKENS .. ' ' .. what .. ' per entry')
  end
  local out, seen = {}, {}
  for i = first, last do
    local t = V.str(args[i], what)
    if t == '' or #t > MAX_TOKEN or string.find(t, '[%c,]') then
      E.fail('ADCACHE_BADARG', what .. ' must be 1 to ' .. MAX_TOKEN
        .. ' bytes without commas or control characters, got ' .. t)
    end
    if not seen[t] then
      seen[t] = true
      out[#out + 1] = t
    end
  end
  return table.concat(out, ',')
end

-- One history entry: '<ms>\t<kind>\t<categories>\t<keywords>\t<referrer>'.
function SS.parse_entry(e)
  local ms, kind, cats, kws, ref = string.match(e, '^(%d+)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')
  return tonumber(ms), kind, cats, kws, ref
end

-- Sorted name/weight flat array of the `top` heaviest tokens (ties by name).
function SS.top(weights, top)
  local names = {}
  for n, w in pairs(weights) do
    if w > 0 then names[#names + 1] = n end
  end
  table.sort(names, function(a, b)
    if weights[a] ~= weights[b] then return weights[a] > weights[b] end
    return a < b
  end)
  local out = {}
  for i = 1, math.min(top, #names) do
    out[#out + 1] = names[i]
    out[#out + 1] = weights[names[i]]
  end
  return out
end

local function record_reply(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return false end
  flat[#flat + 1] = 'pttl'
  flat[#flat + 1] = redis.call('PTTL', key)
  return flat
end

--- @function ac_session_create
--- @summary Create a session for a user with an idle TTL and an absolute lifetime.
--- @keys session session_history...
--- @argv user_id idle_ttl_ms max_lifetime_ms [attr_name attr_value]... -- the history key is
---   optional; given, a stale history of an earlier session with the same id is dropped
--- @reply the record as for ac_session_get
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_EXISTS
local function session_create(keys, args)
  K.check(keys, {'session'}, 'session_history', 1)
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
  if keys[2] then redis.call('DEL', keys[2]) end
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
--- @keys session session_history...
--- @argv none -- the history key is optional; given, it gets the same expiry
--- @reply array: expires_at_ms, deadline_ms
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_NOTFOUND ADCACHE_WRONGTYPE
local function session_touch(keys, args)
  K.check(keys, {'session'}, 'session_history', 1)
  V.nargs(args, 0, 0)
  local idle, deadline = SS.live(keys[1])
  local now = T.now_ms()
  local expires = math.min(now + idle, deadline)
  redis.call('HSET', keys[1], 'touched', now)
  redis.call('PEXPIREAT', keys[1], expires)
  if keys[2] then redis.call('PEXPIREAT', keys[2], expires) end
  return {expires, deadline}
end

--- @function ac_session_delete
--- @summary Delete a session. With the history key, its history too; with user_id, only a
---   session of that user.
--- @keys session session_history...
--- @argv [user_id] -- given, a session of another user is left alone (reply 0); the history key
---   is optional
--- @reply integer: 1 when a session was deleted, 0 when there was none
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG
local function session_delete(keys, args)
  K.check(keys, {'session'}, 'session_history', 1)
  V.nargs(args, 0, 1)
  if args[1] then
    local user = V.id(args[1], 'user_id')
    if redis.call('TYPE', keys[1])['ok'] == 'hash' and redis.call('HGET', keys[1], 'user') ~= user then
      return 0
    end
  end
  local n = redis.call('DEL', keys[1])
  if keys[2] then redis.call('DEL', keys[2]) end
  return n
end

--- @function ac_session_track
--- @summary A page view or ad request: append its context to the bounded history and slide the
---   idle TTL (a touch), in one call.
--- @keys session session_history
--- @argv kind max_history referrer n_categories category... keyword... -- kind view or request;
---   max_history 1..500 entries kept (newest first); referrer up to 512 bytes ('' for none);
---   then n_categories categories and the rest keywords (each at most 16, 1..64 bytes, no comma
---   or control character; duplicates in one entry count once)
--- @reply array: expires_at_ms, deadline_ms, history_length
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_NOTFOUND ADCACHE_WRONGTYPE
local function session_track(keys, args)
  K.check(keys, {'session', 'session_history'})
  V.nargs(args, 4)
  local kind = V.enum(args[1], 'kind', {view = true, request = true})
  local max_history = V.pos(args[2], 'max_history', MAX_HISTORY)
  local ref = V.str(args[3], 'referrer', MAX_REFERRER)
  if string.find(ref, '%c') then E.fail('ADCACHE_BADARG', 'referrer has a control character') end
  local ncat = V.uint(args[4], 'n_categories', #args - 4)
  local cats = SS.tokens(args, 5, 4 + ncat, 'category')
  local kws = SS.tokens(args, 5 + ncat, #args, 'keyword')
  local idle, deadline = SS.live(keys[1])
  SS.check_list(keys[2])
  local now = T.now_ms()
  local expires = math.min(now + idle, deadline)
  redis.call('LPUSH', keys[2], table.concat({string.format('%d', now), kind, cats, kws, ref}, '\t'))
  redis.call('LTRIM', keys[2], 0, max_history - 1)
  redis.call('HSET', keys[1], 'touched', now)
  redis.call('PEXPIREAT', keys[1], expires)
  redis.call('PEXPIREAT', keys[2], expires)
  return {expires, deadline, redis.call('LLEN', keys[2])}
end

--- @function ac_session_history
--- @flags no-writes
--- @summary The newest entries of a session's context history.
--- @keys session session_history
--- @argv count -- 1..500
--- @reply array of entries, newest first, each an array: at_ms, kind, categories (comma-separated),
---   keywords (comma-separated), referrer; nil when the session is unknown or expired
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_WRONGTYPE
local function session_history(keys, args)
  K.check(keys, {'session', 'session_history'})
  V.nargs(args, 1, 1)
  local count = V.pos(args[1], 'count', MAX_HISTORY)
  SS.check_list(keys[2])
  if redis.call('EXISTS', keys[1]) == 0 then return false end
  local out = {}
  for _, e in ipairs(redis.call('LRANGE', keys[2], 0, count - 1)) do
    local ms, kind, cats, kws, ref = SS.parse_entry(e)
    if ms then out[#out + 1] = {ms, kind, cats, kws, ref} end
  end
  return out
end

--- @function ac_session_context
--- @flags no-writes
--- @summary The session's weighted interests for targeting: recent context weighs more.
--- @keys session session_history
--- @argv half_life_ms top -- an entry of age a (ms) weighs floor(1000 * 2^(-a / half_life_ms))
---   thousandths (1000 when it is new, 500 one half-life later); a category's or keyword's weight
---   is the sum over the history entries that carry it; the `top` (1..100) heaviest of each are
---   returned, heaviest first (ties by name), tokens of weight 0 left out
--- @reply field/value array: now <ms>, entries <n>, impressions <n>, categories <array of name,
---   weight>, keywords <array of name, weight>, referrer <the newest entry's, or ''>; nil when the
---   session is unknown or expired
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_WRONGTYPE
local function session_context(keys, args)
  K.check(keys, {'session', 'session_history'})
  V.nargs(args, 2, 2)
  local half = V.pos(args[1], 'half_life_ms', MAX_TTL_MS)
  local top = V.pos(args[2], 'top', MAX_TOP)
  SS.check_list(keys[2])
  if redis.call('EXISTS', keys[1]) == 0 then return false end
  local imps = tonumber(redis.call('HGET', keys[1], 'imps')) or 0
  local now = T.now_ms()
  local catw, kww = {}, {}
  local entries, referrer = 0, ''
  for _, e in ipairs(redis.call('LRANGE', keys[2], 0, MAX_HISTORY - 1)) do
    local ms, _, cats, kws, ref = SS.parse_entry(e)
    if ms then
      entries = entries + 1
      if entries == 1 then referrer = ref end
      local age = math.max(0, now - ms)
      local w = math.floor(1000 * 2 ^ (-age / half))
      for c in string.gmatch(cats, '[^,]+') do catw[c] = (catw[c] or 0) + w end
      for k in string.gmatch(kws, '[^,]+') do kww[k] = (kww[k] or 0) + w end
    end
  end
  return {'now', now, 'entries', entries, 'impressions', imps, 'categories', SS.top(catw, top),
    'keywords', SS.top(kww, top), 'referrer', referrer}
end

--- @function ac_session_impression
--- @summary Count an impression in the session unless a per-session or per-campaign cap is reached.
--- @keys session
--- @argv session_cap campaign_id campaign_cap -- caps are counts, 0 for no cap; campaign_id '' for
---   none (then campaign_cap is ignored); a session counts at most 256 distinct campaigns
--- @reply array: allowed (1 or 0), reason (ok, session_cap, campaign_cap, campaign_limit),
---   session_impressions, campaign_impressions (after the call)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_NOTFOUND ADCACHE_WRONGTYPE
local function session_impression(keys, args)
  K.check(keys, {'session'})
  V.nargs(args, 3, 3)
  local cap = V.uint(args[1], 'session_cap')
  local campaign = args[2]
  if campaign ~= '' then V.id(campaign, 'campaign_id') end
  local ccap = V.uint(args[3], 'campaign_cap')
  SS.live(keys[1])
  local f = 'i.' .. campaign
  local v = redis.call('HMGET', keys[1], 'imps', f, 'ncamp')
  local total, count, ncamp = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
  if cap > 0 and total >= cap then return {0, 'session_cap', total, count} end
  if campaign == '' then
    return {1, 'ok', redis.call('HINCRBY', keys[1], 'imps', 1), 0}
  end
  if ccap > 0 and count >= ccap then return {0, 'campaign_cap', total, count} end
  if count == 0 then
    if ncamp >= MAX_CAMPAIGNS then return {0, 'campaign_limit', total, count} end
    redis.call('HINCRBY', keys[1], 'ncamp', 1)
  end
  return {1, 'ok', redis.call('HINCRBY', keys[1], 'imps', 1), redis.call('HINCRBY', keys[1], f, 1)}
end

--- @function ac_session_index_add
--- @summary Add a session to its user's index (before the session is created; idempotent).
--- @keys user_sessions
--- @argv session_id max_lifetime_ms max_sessions -- the entry is kept until now + max_lifetime_ms
---   + 5 s (an upper bound of the session's end; a retry only raises it); max_sessions bounds the
---   user's live entries (up to 4096)
--- @reply array: bound_ms, sessions (count)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE
local function session_index_add(keys, args)
  K.check(keys, {'user_sessions'})
  V.nargs(args, 3, 3)
  local sid = V.id(args[1], 'session_id')
  local life = V.pos(args[2], 'max_lifetime_ms', MAX_TTL_MS)
  local max = V.pos(args[3], 'max_sessions', HARD_MAX_SESSIONS)
  local t = redis.call('TYPE', keys[1])['ok']
  if t ~= 'zset' and t ~= 'none' then E.fail('ADCACHE_WRONGTYPE', keys[1] .. ' is not an index') end
  local now = T.now_ms()
  local old = tonumber(redis.call('ZSCORE', keys[1], sid))
  if not old or old <= now then
    local live = redis.call('ZCOUNT', keys[1], '(' .. now, '+inf')
    if live >= max then
      E.fail('ADCACHE_LIMIT', 'user has ' .. live .. ' live sessions, the limit is ' .. max)
    end
  end
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now)
  local bound = now + life + INDEX_SLACK_MS
  redis.call('ZADD', keys[1], 'GT', bound, sid)
  local top = redis.call('ZRANGE', keys[1], 0, 0, 'REV', 'WITHSCORES')
  redis.call('PEXPIREAT', keys[1], tonumber(top[2]))
  return {tonumber(redis.call('ZSCORE', keys[1], sid)), redis.call('ZCARD', keys[1])}
end

--- @function ac_session_index_remove
--- @summary Remove sessions from their user's index (after they were deleted; idempotent).
--- @keys user_sessions
--- @argv session_id... -- 1 to 1000 ids
--- @reply integer: entries removed
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE
local function session_index_remove(keys, args)
  K.check(keys, {'user_sessions'})
  V.nargs(args, 1)
  if #args > MAX_REMOVE then E.fail('ADCACHE_LIMIT', 'at most ' .. MAX_REMOVE .. ' ids per call') end
  for i = 1, #args do V.id(args[i], 'session_id') end
  local t = redis.call('TYPE', keys[1])['ok']
  if t ~= 'zset' and t ~= 'none' then E.fail('ADCACHE_WRONGTYPE', keys[1] .. ' is not an index') end
  return redis.call('ZREM', keys[1], unpack(args))
end

--- @function ac_session_index_list
--- @flags no-writes
--- @summary The sessions of a user's index whose bound has not passed (they may have idled out).
--- @keys user_sessions
--- @argv none
--- @reply array: session_id, bound_ms per entry, soonest bound first
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_WRONGTYPE
local function session_index_list(keys, args)
  K.check(keys, {'user_sessions'})
  V.nargs(args, 0, 0)
  local t = redis.call('TYPE', keys[1])['ok']
  if t ~= 'zset' and t ~= 'none' then E.fail('ADCACHE_WRONGTYPE', keys[1] .. ' is not an index') end
  return redis.call('ZRANGE', keys[1], '(' .. T.now_ms(), '+inf', 'BYSCORE', 'WITHSCORES')
end

redis.register_function{function_name='ac_session_create', callback=session_create, flags={}, description='Create a session for a user with an idle TTL and an absolute lifetime.'}
redis.register_function{function_name='ac_session_get', callback=session_get, flags={'no-writes'}, description='Read a session; nil when it is unknown or expired.'}
redis.register_function{function_name='ac_session_touch', callback=session_touch, flags={}, description='Slide the idle TTL forward from now, never past the absolute lifetime.'}
redis.register_function{function_name='ac_session_delete', callback=session_delete, flags={}, description='Delete a session. With the history key, its history too; with user_id, only a session of that user.'}
redis.register_function{function_name='ac_session_track', callback=session_track, flags={}, description='A page view or ad request: append its context to the bounded history and slide the idle TTL (a touch), in one call.'}
redis.register_function{function_name='ac_session_history', callback=session_history, flags={'no-writes'}, description='The newest entries of a session\'s context history.'}
redis.register_function{function_name='ac_session_context', callback=session_context, flags={'no-writes'}, description='The session\'s weighted interests for targeting: recent context weighs more.'}
redis.register_function{function_name='ac_session_impression', callback=session_impression, flags={}, description='Count an impression in the session unless a per-session or per-campaign cap is reached.'}
redis.register_function{function_name='ac_session_index_add', callback=session_index_add, flags={}, description='Add a session to its user\'s index (before the session is created; idempotent).'}
redis.register_function{function_name='ac_session_index_remove', callback=session_index_remove, flags={}, description='Remove sessions from their user\'s index (after they were deleted; idempotent).'}
redis.register_function{function_name='ac_session_index_list', callback=session_index_list, flags={'no-writes'}, description='The sessions of a user\'s index whose bound has not passed (they may have idled out).'}
end

-- ==== domain: version (lua/version.lua.j2) ====
do
--@domain version: what is deployed. The renderer fills in the version and the sha256 of the
-- rendered source (computed with the hash itself zeroed).
local LIBRARY_VERSION = '0.1.0'
local LIBRARY_SHA256 = '32fe48bec5faacf79617a0fbc4e8fc419e556930ecc4a507f8157511bb4ed8e3'

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
