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
  campaign = {'c', '^camp$'},
  budget = {'c', '^budget$'},
  budget_resv = {'c', '^resv$'},
  budget_resv_exp = {'c', '^resvx$'},
  budget_settled = {'c', '^settled$'},
  budget_settled_exp = {'c', '^settledx$'},
  targeting_index = {'t', '^idx$'},
  targeting_hold = {'t', '^hold$'},
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
function K.campaign(tag)
  return 'ad:{' .. tag .. '}:camp'
end
function K.budget(tag)
  return 'ad:{' .. tag .. '}:budget'
end
function K.budget_resv(tag)
  return 'ad:{' .. tag .. '}:resv'
end
function K.budget_resv_exp(tag)
  return 'ad:{' .. tag .. '}:resvx'
end
function K.budget_settled(tag)
  return 'ad:{' .. tag .. '}:settled'
end
function K.budget_settled_exp(tag)
  return 'ad:{' .. tag .. '}:settledx'
end
function K.targeting_index(tag)
  return 'ad:{' .. tag .. '}:idx'
end
function K.targeting_hold(tag)
  return 'ad:{' .. tag .. '}:hold'
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

-- ==== helper: campaign_state (lua/_campaign_state.lua.j2) ====
--@helper campaign_state: what the campaign and budget domains share: reading a campaign record,
-- the budget state rolled to the campaign's current day, servability, pacing and the index plan.

local CS = {}
-- Campaign keys live until ac_campaign_remove, or this long after the campaign's end.
CS.RETAIN_MS = 30 * T.DAY
-- Targeting dimensions (shard names are '<dimension>.<value>', value 'all' matches everyone).
CS.DIMS = {interest = true, geo = true, device = true}

-- The record as a table (field -> string), false when there is none.
function CS.load(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return false end
  local r = {}
  for i = 1, #flat, 2 do r[flat[i]] = flat[i + 1] end
  if not r.version or not r['end'] or not r.budget or not r.shards then
    E.fail('ADCACHE_WRONGTYPE', key .. ' is not a campaign record')
  end
  return r
end

function CS.require(key)
  local r = CS.load(key)
  if not r then E.fail('ADCACHE_NOTFOUND', 'campaign ' .. key .. ' is unknown') end
  return r
end

-- The fields budget calls need (HMGET: the creatives and fcap JSON are not copied on the hot
-- path). NOTFOUND when there is no record.
CS.CORE = {'version', 'status', 'bid', 'budget', 'daily', 'start', 'end', 'tz', 'pacing',
  'tol_bp', 'floor', 'shards'}
function CS.require_core(key)
  local v = redis.call('HMGET', key, unpack(CS.CORE))
  for i = 1, #CS.CORE do
    if not v[i] then
      if i == 1 and redis.call('EXISTS', key) == 0 then
        E.fail('ADCACHE_NOTFOUND', 'campaign ' .. key .. ' is unknown')
      end
      E.fail('ADCACHE_WRONGTYPE', key .. ' is not a campaign record')
    end
  end
  -- One constructor: the table is sized once (this runs on every budget call).
  return {version = v[1], status = v[2], bid = v[3], budget = v[4], daily = v[5], start = v[6],
    ['end'] = v[7], tz = v[8], pacing = v[9], tol_bp = v[10], floor = v[11], shards = v[12]}
end

-- Expiry of every key of the campaign: RETAIN_MS after its end (never in the past).
function CS.expire_at(rec, now)
  return math.max(tonumber(rec['end']), now) + CS.RETAIN_MS
end

-- The cheapest impression at the campaign's bid: ceil(bid CPM micros / 1000), at least 1 micro.
-- A budget with less than this left is exhausted.
function CS.min_cost(rec)
  local c = math.floor((tonumber(rec.bid) + 999) / 1000)
  if c < 1 then c = 1 end
  return c
end

-- Budget state as of `now`, with today's spend zero when the stored day is not the campaign's
-- current day (the write that follows stores the roll). Never writes.
function CS.budget(bkey, rec, now)
  local v = redis.call('HMGET', bkey, 'spent', 'day', 'dspent', 'reserved', 'swept')
  local today = T.ymd(now, tonumber(rec.tz))
  local b = {spent = M.stored(v[1]), day = today, reserved = M.stored(v[4]), rolled = v[2] ~= today,
    swept = M.stored(v[5])}
  b.dspent = b.rolled and 0 or M.stored(v[3])
  return b
end

-- Servability: reason ('' when servable), whether the campaign belongs in the targeting index,
-- and the time before which the index must hold it back (0: none). Precedence of reasons:
-- paused, ended, lifetime_budget, not_started, daily_budget.
function CS.assess(rec, b, now)
  if rec.status ~= 'active' then return 'paused', false, 0 end
  if now >= tonumber(rec['end']) then return 'ended', false, 0 end
  local mc = CS.min_cost(rec)
  if tonumber(rec.budget) - b.spent < mc then return 'lifetime_budget', false, 0 end
  local reason, nb = '', 0
  local start = tonumber(rec.start)
  if now < start then reason, nb = 'not_started', start end
  local daily = tonumber(rec.daily)
  if daily > 0 and daily - b.dspent < mc then
    if reason == '' then reason = 'daily_budget' end
    nb = math.max(nb, T.period_end(now, 'day', tonumber(rec.tz)))
  end
  return reason, true, nb
end

-- Pacing: what today's spend + reservations may reach by `now`, or -1 when pacing is off.
-- allowed = floor + daily * elapsed_fraction * (1 + tol_bp / 10000), floored to a micro.
function CS.pacing(rec, now)
  local daily = tonumber(rec.daily)
  local elapsed = now - T.period_start(now, 'day', tonumber(rec.tz))
  local ppm = math.floor(elapsed * 1000000 / T.DAY)
  if rec.pacing ~= 'even' or daily <= 0 then return -1, ppm end
  local allowed = tonumber(rec.floor)
    + math.floor(daily * (elapsed / T.DAY) * ((10000 + tonumber(rec.tol_bp)) / 10000))
  return math.min(allowed, daily), ppm
end

-- Split a space-separated shard list into a table.
function CS.split(s)
  local out = {}
  for w in string.gmatch(s or '', '%S+') do out[#out + 1] = w end
  return out
end

-- ==== domain: budget (lua/budget.lua.j2) ====
do
--@domain budget: spend in integer micros with reservations that never let a campaign overspend,
-- idempotent commits, the daily roll, pacing, and lazy reclaim of expired reservations.

-- Budget hash: spent, day, dspent, reserved, and the counters c_reserved, c_committed,
-- c_released, c_reclaimed (reservation amounts) and c_late (charged by late commits), n_refused.
-- Invariants: c_reserved = c_committed + c_released + c_reclaimed + reserved;
-- spent = c_committed + c_late; spent + reserved <= budget (and today's for the daily budget).
-- Settled entries ('<state>:<charged>:<released>', state c committed, l late, f late refused,
-- r released, x expired and reclaimed) answer retries for KEEP_MS.
local KEEP_MS = T.HOUR
local MAX_TTL_MS = T.DAY
local SWEEP = 100 -- most expired reservations reclaimed (and settled entries forgotten) per call
local SWEEP_EVERY_MS = 250
local NAMES = {'campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled',
  'budget_settled_exp'}
local STATE_WORD = {c = 'committed', l = 'late', f = 'refused', r = 'released', x = 'expired'}

local function parse_settled(v)
  local st, charged, released = string.match(v, '^(%a):(%d+):(%d+)$')
  if not st or not STATE_WORD[st] then E.fail('ADCACHE_WRONGTYPE', 'bad settled entry ' .. v) end
  return st, tonumber(charged), tonumber(released)
end

-- Housekeeping before a budget write: store the day roll; then, at most every SWEEP_EVERY_MS
-- (or when forced), reclaim expired reservations (their ids become settled 'x' so a late commit
-- is still recognised), forget old settled entries, and re-arm the keys' expiry. At most SWEEP of
-- each per call, so the work per call is bounded. Between sweeps an expired reservation still
-- counts as reserved: that only makes the budget check stricter. Returns the budget state.
local function housekeep(keys, rec, now, force)
  local b = CS.budget(keys[2], rec, now)
  if b.rolled then redis.call('HSET', keys[2], 'day', b.day, 'dspent', 0) end
  if not force and now < b.swept + SWEEP_EVERY_MS then return b end
  redis.call('HSET', keys[2], 'swept', now)
  local old = redis.call('ZRANGEBYSCORE', keys[6], '-inf', now, 'LIMIT', 0, SWEEP)
  if #old > 0 then
    redis.call('HDEL', keys[5], unpack(old))
    redis.call('ZREM', keys[6], unpack(old))
  end
  local due = redis.call('ZRANGEBYSCORE', keys[4], '-inf', now, 'LIMIT', 0, SWEEP)
  if #due > 0 then
    local back = 0
    local amounts = redis.call('HMGET', keys[3], unpack(due))
    for i, rid in ipairs(due) do
      local amt = M.stored(amounts[i])
      back = back + amt
      redis.call('HSET', keys[5], rid, 'x:' .. amt .. ':0')
      redis.call('ZADD', keys[6], now + KEEP_MS, rid)
    end
    redis.call('HDEL', keys[3], unpack(due))
    redis.call('ZREM', keys[4], unpack(due))
    redis.call('HINCRBY', keys[2], 'c_reclaimed', back)
    b.reserved = redis.call('HINCRBY', keys[2], 'reserved', -back)
  end
  local at = CS.expire_at(rec, now)
  for i = 2, 6 do redis.call('PEXPIREAT', keys[i], at) end
  return b
end

-- Give a hash/zset pair its expiry when the hash was just created (it is deleted when emptied,
-- so a new one has none; the sweep re-arms every key).
local function arm(keys, i, rec, now)
  if redis.call('HLEN', keys[i]) == 1 then
    local at = CS.expire_at(rec, now)
    redis.call('PEXPIREAT', keys[i], at)
    redis.call('PEXPIREAT', keys[i + 1], at)
  end
end

local function open(keys)
  K.check(keys, NAMES)
end

--- @function ac_budget_reserve
--- @summary Reserve an amount for a bid; refused (a reply) when budget, daily budget, pacing or
--- the campaign's state forbid it. A retry with the same id and amount is answered again.
--- @keys campaign budget budget_resv budget_resv_exp budget_settled budget_settled_exp
--- @argv reservation_id amount_micros ttl_ms
--- @reply field/value array: status (reserved|refused), reason ('' or paused|ended|not_started|
--- lifetime_budget|daily_budget|pacing|expired), amount, expires_at, spent, day_spent, reserved,
--- pacing_allowed (-1 when off), replay (0/1)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_NOTFOUND ADCACHE_EXISTS ADCACHE_STATE ADCACHE_WRONGTYPE
local function budget_reserve(keys, args)
  open(keys)
  V.nargs(args, 3, 3)
  local rid = V.id(args[1], 'reservation_id')
  local amount = M.positive(args[2], 'amount')
  local ttl = V.pos(args[3], 'ttl_ms', MAX_TTL_MS)
  local rec = CS.require_core(keys[1])
  if redis.call('HEXISTS', keys[5], rid) == 1 then
    E.fail('ADCACHE_STATE', 'reservation ' .. rid .. ' is already settled')
  end
  local now = T.now_ms()
  local have = redis.call('HGET', keys[3], rid)
  local exp = tonumber(redis.call('ZSCORE', keys[4], rid) or 0)
  if have and tonumber(have) ~= amount then
    E.fail('ADCACHE_EXISTS', 'reservation ' .. rid .. ' holds ' .. have .. ', not ' .. amount)
  end
  local b = housekeep(keys, rec, now)
  local allowed = CS.pacing(rec, now)
  local function reply(status, reason, expires, replay)
    return {'status', status, 'reason', reason, 'amount', amount, 'expires_at', expires,
      'spent', b.spent, 'day_spent', b.dspent, 'reserved', b.reserved,
      'pacing_allowed', allowed, 'replay', replay}
  end
  if have then
    if exp > now then return reply('reserved', '', exp, 1) end
    return reply('refused', 'expired', exp, 1) -- reclaimed by the next sweep
  end
  local reason = CS.assess(rec, b, now)
  local after = b.reserved + amount
  if reason == 'not_started' or reason == '' or reason == 'daily_budget' then
    local daily = tonumber(rec.daily)
    if b.spent + after > tonumber(rec.budget) then
      reason = 'lifetime_budget'
    elseif reason == 'not_started' then
      reason = 'not_started'
    elseif daily > 0 and b.dspent + after > daily then
      reason = 'daily_budget'
    elseif allowed >= 0 and b.dspent + after > allowed then
      reason = 'pacing'
    else
      reason = ''
    end
  end
  if reason ~= '' then
    redis.call('HINCRBY', keys[2], 'n_refused', 1)
    return reply('refused', reason, 0, 0)
  end
  redis.call('HSET', keys[3], rid, amount)
  redis.call('ZADD', keys[4], now + ttl, rid)
  arm(keys, 3, rec, now)
  redis.call('HINCRBY', keys[2], 'c_reserved', amount)
  b.reserved = redis.call('HINCRBY', keys[2], 'reserved', amount)
  return reply('reserved', '', now + ttl, 0)
end

-- b: the budget state as this call leaves it.
local function commit_reply(rec, b, now, st, charged, released, replay)
  local reason, indexable, nb = CS.assess(rec, b, now)
  local exhausted = ''
  if reason == 'lifetime_budget' or reason == 'daily_budget' then exhausted = reason end
  return {'status', STATE_WORD[st], 'charged', charged, 'released', released, 'spent', b.spent,
    'day_spent', b.dspent, 'reserved', b.reserved, 'exhausted', exhausted,
    'indexable', indexable and 1 or 0, 'not_before', nb, 'end', tonumber(rec['end']),
    'shards', rec.shards, 'replay', replay}
end

--- @function ac_budget_commit
--- @summary Charge the clearing price against a reservation (amount <= reserved; the rest is
--- released). Idempotent per reservation id. A reservation that expired is charged late if the
--- budget still allows it (the impression was served), else refused.
--- @keys campaign budget budget_resv budget_resv_exp budget_settled budget_settled_exp
--- @argv reservation_id amount_micros
--- @reply field/value array: status (committed|late|refused), charged, released, spent, day_spent,
--- reserved, exhausted ('' or lifetime_budget|daily_budget), indexable (0/1), not_before, end,
--- shards (the campaign's targeting shards), replay (0/1)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_NOTFOUND ADCACHE_STATE ADCACHE_WRONGTYPE
local function budget_commit(keys, args)
  open(keys)
  V.nargs(args, 2, 2)
  local rid = V.id(args[1], 'reservation_id')
  local amount = M.amount(args[2], 'amount')
  local rec = CS.require_core(keys[1])
  local now = T.now_ms()
  local late, held = false, 0
  local settled = redis.call('HGET', keys[5], rid)
  if settled then
    local st, charged, released = parse_settled(settled)
    if st == 'r' then E.fail('ADCACHE_STATE', 'reservation ' .. rid .. ' was released') end
    if st ~= 'x' then
      return commit_reply(rec, CS.budget(keys[2], rec, now), now, st, charged, released, 1)
    end
    late, held = true, charged
  else
    local have = redis.call('HGET', keys[3], rid)
    if not have then E.fail('ADCACHE_NOTFOUND', 'no reservation ' .. rid) end
    held = tonumber(have)
    late = tonumber(redis.call('ZSCORE', keys[4], rid) or 0) <= now
  end
  if amount > held then
    E.fail('ADCACHE_BADARG', 'amount ' .. amount .. ' is above the reservation ' .. held)
  end
  local b = housekeep(keys, rec, now) -- reclaims this reservation too when it is late
  local st, released = 'c', held - amount
  if late then
    released = 0
    if redis.call('HEXISTS', keys[3], rid) == 1 then
      -- Expired but behind the SWEEP bound: reclaim it here, or a later sweep would overwrite
      -- this commit's settled entry (and a retry would charge again).
      redis.call('HDEL', keys[3], rid)
      redis.call('ZREM', keys[4], rid)
      redis.call('HINCRBY', keys[2], 'c_reclaimed', held)
      b.reserved = redis.call('HINCRBY', keys[2], 'reserved', -held)
    end
    local daily = tonumber(rec.daily)
    local after = b.reserved + amount
    if b.spent + after > tonumber(rec.budget) or (daily > 0 and b.dspent + after > daily) then
      st, amount = 'f', 0
    else
      st = 'l'
      redis.call('HINCRBY', keys[2], 'c_late', amount)
    end
  else
    redis.call('HDEL', keys[3], rid)
    redis.call('ZREM', keys[4], rid)
    b.reserved = redis.call('HINCRBY', keys[2], 'reserved', -held)
    redis.call('HINCRBY', keys[2], 'c_committed', amount)
    redis.call('HINCRBY', keys[2], 'c_released', released)
  end
  if amount > 0 then
    b.spent = redis.call('HINCRBY', keys[2], 'spent', amount)
    b.dspent = redis.call('HINCRBY', keys[2], 'dspent', amount)
  end
  redis.call('HSET', keys[5], rid, st .. ':' .. amount .. ':' .. released)
  redis.call('ZADD', keys[6], now + KEEP_MS, rid)
  arm(keys, 5, rec, now)
  return commit_reply(rec, b, now, st, amount, released, 0)
end

--- @function ac_budget_release
--- @summary Release a reservation (the bid lost). Idempotent; never fails on the reservation's state.
--- @keys campaign budget budget_resv budget_resv_exp budget_settled budget_settled_exp
--- @argv reservation_id
--- @reply field/value array: status (released|committed|late|refused|expired|unknown), amount
--- (released now), reserved, replay (0/1)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_NOTFOUND ADCACHE_WRONGTYPE
local function budget_release(keys, args)
  open(keys)
  V.nargs(args, 1, 1)
  local rid = V.id(args[1], 'reservation_id')
  local rec = CS.require_core(keys[1])
  local settled = redis.call('HGET', keys[5], rid)
  if settled then parse_settled(settled) end
  local now = T.now_ms()
  local b = housekeep(keys, rec, now)
  local have = redis.call('HGET', keys[3], rid)
  if have then
    local amt = tonumber(have)
    redis.call('HDEL', keys[3], rid)
    redis.call('ZREM', keys[4], rid)
    redis.call('HINCRBY', keys[2], 'c_released', amt)
    b.reserved = redis.call('HINCRBY', keys[2], 'reserved', -amt)
    redis.call('HSET', keys[5], rid, 'r:0:' .. amt)
    redis.call('ZADD', keys[6], now + KEEP_MS, rid)
    arm(keys, 5, rec, now)
    return {'status', 'released', 'amount', amt, 'reserved', b.reserved, 'replay', 0}
  end
  settled = redis.call('HGET', keys[5], rid)
  if settled then
    local st = parse_settled(settled)
    return {'status', STATE_WORD[st], 'amount', 0, 'reserved', b.reserved, 'replay', 1}
  end
  return {'status', 'unknown', 'amount', 0, 'reserved', b.reserved, 'replay', 0}
end

--- @function ac_budget_state
--- @summary Budget, spend, reservations, counters, pacing and servability of a campaign (reclaims
--- expired reservations first).
--- @keys campaign budget budget_resv budget_resv_exp budget_settled budget_settled_exp
--- @argv none
--- @reply field/value array: budget, daily, spent, day, day_spent, reserved, outstanding,
--- c_reserved, c_committed, c_released, c_reclaimed, c_late, n_refused, pacing (off|even),
--- pacing_allowed (-1 when off), elapsed_ppm, day_start, day_end, servable, reason, now
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_NOTFOUND ADCACHE_WRONGTYPE
local function budget_state(keys, args)
  open(keys)
  V.nargs(args, 0, 0)
  local rec = CS.require_core(keys[1])
  local now = T.now_ms()
  local b = housekeep(keys, rec, now, true)
  local c = redis.call('HMGET', keys[2], 'c_reserved', 'c_committed', 'c_released', 'c_reclaimed',
    'c_late', 'n_refused')
  local allowed, ppm = CS.pacing(rec, now)
  local tz = tonumber(rec.tz)
  local reason = CS.assess(rec, b, now)
  return {'budget', tonumber(rec.budget), 'daily', tonumber(rec.daily), 'spent', b.spent,
    'day', b.day, 'day_spent', b.dspent, 'reserved', b.reserved,
    'outstanding', redis.call('HLEN', keys[3]),
    'c_reserved', M.stored(c[1]), 'c_committed', M.stored(c[2]), 'c_released', M.stored(c[3]),
    'c_reclaimed', M.stored(c[4]), 'c_late', M.stored(c[5]), 'n_refused', M.stored(c[6]),
    'pacing', rec.pacing, 'pacing_allowed', allowed, 'elapsed_ppm', ppm,
    'day_start', T.period_start(now, 'day', tz), 'day_end', T.period_end(now, 'day', tz),
    'servable', reason == '' and 1 or 0, 'reason', reason, 'now', now}
end

redis.register_function{function_name='ac_budget_reserve', callback=budget_reserve, flags={}, description='Reserve an amount for a bid; refused (a reply) when budget, daily budget, pacing or the campaign\'s state forbid it. A retry with the same id and amount is answered again.'}
redis.register_function{function_name='ac_budget_commit', callback=budget_commit, flags={}, description='Charge the clearing price against a reservation (amount <= reserved; the rest is released). Idempotent per reservation id. A reservation that expired is charged late if the budget still allows it (the impression was served), else refused.'}
redis.register_function{function_name='ac_budget_release', callback=budget_release, flags={}, description='Release a reservation (the bid lost). Idempotent; never fails on the reservation\'s state.'}
redis.register_function{function_name='ac_budget_state', callback=budget_state, flags={}, description='Budget, spend, reservations, counters, pacing and servability of a campaign (reclaims expired reservations first).'}
end

-- ==== domain: campaign (lua/campaign.lua.j2) ====
do
--@domain campaign: the campaign record (one hash per campaign) with compare-and-set versions,
-- derived servability, and the targeting shards the client must add the campaign to / remove it from.

-- Record fields: advertiser, status (active|paused), bid (CPM micros), budget (lifetime micros),
-- daily (micros, 0 = none), start/end (ms), tz (day offset s), pacing (off|even), tol_bp, floor
-- (micros), shards ('<dim>.<value>' list, sorted), fcap and creatives (JSON, stored as given),
-- version, created, updated.
local MAX_SHARDS = 64
local MAX_TZ = 14 * 3600
local STATUS = {active = true, paused = true}
local PACING = {off = true, even = true}
local DEFAULTS = {daily = '0', tz = '0', pacing = 'off', tol_bp = '1000', floor = '0',
  fcap = '[]', creatives = '[]'}
local REQUIRED = {'advertiser', 'status', 'bid', 'budget', 'start', 'end', 'shards'}

-- Shards: at least one per dimension, each '<dim>.<value>' with value [A-Za-z0-9_-]{1,64}.
-- Returns the canonical (sorted, deduplicated) space-separated list.
local function check_shards(v)
  V.str(v, 'shards', 8192)
  local seen, list, dims = {}, {}, {}
  for _, s in ipairs(CS.split(v)) do
    local dim, val = string.match(s, '^(%l+)%.([%w_%-]+)$')
    if not dim or not CS.DIMS[dim] or #val > 64 then
      E.fail('ADCACHE_BADARG', 'shard ' .. s .. ' must be interest|geo|device.<value> ([A-Za-z0-9_-], <= 64 bytes)')
    end
    if not seen[s] then
      seen[s] = true
      list[#list + 1] = s
      dims[dim] = true
    end
  end
  if #list > MAX_SHARDS then E.fail('ADCACHE_LIMIT', 'at most ' .. MAX_SHARDS .. ' shards') end
  for dim in pairs(CS.DIMS) do
    if not dims[dim] then E.fail('ADCACHE_BADARG', 'shards name no ' .. dim .. ' value (use ' .. dim .. '.all)') end
  end
  table.sort(list)
  return table.concat(list, ' ')
end

local CHECK = {
  advertiser = function(v) return V.id(v, 'advertiser') end,
  status = function(v) return V.enum(v, 'status', STATUS) end,
  bid = function(v) M.amount(v, 'bid'); return v end,
  budget = function(v) M.positive(v, 'budget'); return v end,
  daily = function(v) M.amount(v, 'daily'); return v end,
  start = function(v) V.uint(v, 'start'); return v end,
  ['end'] = function(v) V.pos(v, 'end'); return v end,
  tz = function(v) V.int(v, 'tz', -MAX_TZ, MAX_TZ); return v end,
  pacing = function(v) return V.enum(v, 'pacing', PACING) end,
  tol_bp = function(v) V.int(v, 'tol_bp', 0, 100000); return v end,
  floor = function(v) M.amount(v, 'floor'); return v end,
  shards = check_shards,
  fcap = function(v) return V.str(v, 'fcap', 16384) end,
  creatives = function(v) return V.str(v, 'creatives', 65536) end,
}

-- Validated name/value pairs from args[2..] into `into`.
local function read_fields(args, into)
  if (#args - 1) % 2 ~= 0 then E.fail('ADCACHE_ARITY', 'fields must come as name/value pairs') end
  for i = 2, #args, 2 do
    local f = CHECK[args[i]]
    if not f then E.fail('ADCACHE_BADARG', 'unknown campaign field ' .. tostring(args[i])) end
    into[args[i]] = f(args[i + 1])
  end
  return into
end

local function check_record(r)
  if tonumber(r.start) >= tonumber(r['end']) then
    E.fail('ADCACHE_BADARG', 'start must be before end')
  end
  if r.pacing == 'even' and tonumber(r.daily) == 0 then
    E.fail('ADCACHE_BADARG', 'even pacing needs a daily budget')
  end
end

local function check_version(rec, expected, key)
  if expected < 0 then return end
  local have = rec and tonumber(rec.version) or 0
  if have ~= expected then
    E.fail('ADCACHE_CONFLICT', key .. ' is at version ' .. have .. ', expected ' .. expected)
  end
end

-- Shards of `new_shards` to add the campaign to (all of them, when it belongs in the index: puts
-- are idempotent, so a retry or a later write repairs a half-applied change) and shards to remove
-- it from (those it left; all of them when it must not be indexed).
local function index_plan(rec, b, now, old_shards)
  local reason, indexable, nb = CS.assess(rec, b, now)
  local new = CS.split(rec.shards)
  local keep = {}
  for _, s in ipairs(new) do keep[s] = true end
  local remove = {}
  for _, s in ipairs(CS.split(old_shards)) do
    if not keep[s] then remove[#remove + 1] = s end
  end
  if not indexable then
    for _, s in ipairs(new) do remove[#remove + 1] = s end
    new = {}
  end
  return {'version', tonumber(rec.version), 'servable', reason == '' and 1 or 0, 'reason', reason,
    'end', tonumber(rec['end']), 'not_before', nb, 'add', table.concat(new, ' '),
    'remove', table.concat(remove, ' ')}
end

local function write(keys, rec, old, now)
  rec.version = tostring((old and tonumber(old.version) or 0) + 1)
  rec.updated = tostring(now)
  rec.created = old and old.created or tostring(now)
  local flat = {}
  for k, v in pairs(rec) do
    flat[#flat + 1] = k
    flat[#flat + 1] = v
  end
  redis.call('HSET', keys[1], unpack(flat))
  local at = CS.expire_at(rec, now)
  redis.call('PEXPIREAT', keys[1], at)
  redis.call('PEXPIREAT', keys[2], at)
  return index_plan(rec, CS.budget(keys[2], rec, now), now, old and old.shards or '')
end

--- @function ac_campaign_set
--- @summary Create or replace a campaign record (compare-and-set on its version).
--- @keys campaign budget
--- @argv expected_version (-1 any, 0 must not exist, n) [field value]... fields: advertiser
--- status bid budget start end shards (required), daily tz pacing tol_bp floor fcap creatives
--- @reply field/value array: version, servable, reason, end, not_before, add (shards to put the
--- campaign in, space-separated), remove (shards to remove it from)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_CONFLICT ADCACHE_WRONGTYPE
local function campaign_set(keys, args)
  K.check(keys, {'campaign', 'budget'})
  V.nargs(args, 1)
  local expected = V.int(args[1], 'expected_version', -1)
  local rec = read_fields(args, {})
  for _, f in ipairs(REQUIRED) do
    if rec[f] == nil then E.fail('ADCACHE_BADARG', 'field ' .. f .. ' is missing') end
  end
  for f, v in pairs(DEFAULTS) do
    if rec[f] == nil then rec[f] = v end
  end
  check_record(rec)
  local old = CS.load(keys[1])
  check_version(old, expected, keys[1])
  return write(keys, rec, old, T.now_ms())
end

--- @function ac_campaign_patch
--- @summary Change some fields of a campaign (compare-and-set on its version).
--- @keys campaign budget
--- @argv expected_version (-1 any, n) field value [field value]... (fields as for ac_campaign_set)
--- @reply as for ac_campaign_set
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_NOTFOUND ADCACHE_CONFLICT ADCACHE_WRONGTYPE
local function campaign_patch(keys, args)
  K.check(keys, {'campaign', 'budget'})
  V.nargs(args, 3)
  local expected = V.int(args[1], 'expected_version', -1)
  local changes = read_fields(args, {})
  local old = CS.require(keys[1])
  check_version(old, expected, keys[1])
  local rec = {}
  for k, v in pairs(old) do rec[k] = v end
  for k, v in pairs(changes) do rec[k] = v end
  check_record(rec)
  return write(keys, rec, old, T.now_ms())
end

--- @function ac_campaign_get
--- @flags no-writes
--- @summary Read a campaign: its record, budget figures and derived servability; nil if unknown.
--- @keys campaign budget
--- @argv none
--- @reply field/value array: the record fields, then spent, day, day_spent, reserved, servable
--- (0/1), reason ('' or paused|ended|lifetime_budget|not_started|daily_budget), not_before, now; or nil
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_WRONGTYPE
local function campaign_get(keys, args)
  K.check(keys, {'campaign', 'budget'})
  V.nargs(args, 0, 0)
  local rec = CS.load(keys[1])
  if not rec then return false end
  local now = T.now_ms()
  local b = CS.budget(keys[2], rec, now)
  local reason, _, nb = CS.assess(rec, b, now)
  local out = {}
  for k, v in pairs(rec) do
    out[#out + 1] = k
    out[#out + 1] = v
  end
  local extra = {'spent', b.spent, 'day', b.day, 'day_spent', b.dspent, 'reserved', b.reserved,
    'servable', reason == '' and 1 or 0, 'reason', reason, 'not_before', nb, 'now', now}
  for _, v in ipairs(extra) do out[#out + 1] = v end
  return out
end

--- @function ac_campaign_remove
--- @summary Delete a campaign with its budget state; replies the shards to remove it from.
--- @keys campaign budget budget_resv budget_resv_exp budget_settled budget_settled_exp
--- @argv expected_version (-1 any, n)
--- @reply field/value array: removed (0/1), remove (shards, space-separated)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_CONFLICT ADCACHE_WRONGTYPE
local function campaign_remove(keys, args)
  K.check(keys, {'campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled',
    'budget_settled_exp'})
  V.nargs(args, 1, 1)
  local expected = V.int(args[1], 'expected_version', -1)
  local old = CS.load(keys[1])
  if not old then
    if expected > 0 then check_version(old, expected, keys[1]) end
    return {'removed', 0, 'remove', ''}
  end
  check_version(old, expected, keys[1])
  redis.call('DEL', unpack(keys))
  return {'removed', 1, 'remove', old.shards}
end

redis.register_function{function_name='ac_campaign_set', callback=campaign_set, flags={}, description='Create or replace a campaign record (compare-and-set on its version).'}
redis.register_function{function_name='ac_campaign_patch', callback=campaign_patch, flags={}, description='Change some fields of a campaign (compare-and-set on its version).'}
redis.register_function{function_name='ac_campaign_get', callback=campaign_get, flags={'no-writes'}, description='Read a campaign: its record, budget figures and derived servability; nil if unknown.'}
redis.register_function{function_name='ac_campaign_remove', callback=campaign_remove, flags={}, description='Delete a campaign with its budget state; replies the shards to remove it from.'}
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

-- ==== domain: targeting (lua/targeting.lua.j2) ====
do
--@domain targeting: the targeting index, one shard per '<dimension>.<value>' (tag {t:<shard>}):
-- campaign ids scored by their end time, plus holds (not servable before a time). The client
-- queries the shards of a user in one pipelined round per node and combines them (see
-- docs/campaign.md for the matching rule and the consistency story).

local MAX_IDS = 100
local MAX_QUERY = 5000
local NAMES = {'targeting_index', 'targeting_hold'}

-- Drop ended members and passed holds; let the keys expire with their latest member.
local function prune(keys, now)
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', keys[2], '-inf', now)
  local last = redis.call('ZRANGE', keys[1], -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', keys[2])
    return
  end
  redis.call('PEXPIREAT', keys[1], tonumber(last[2]))
  if redis.call('EXISTS', keys[2]) == 1 then redis.call('PEXPIREAT', keys[2], tonumber(last[2])) end
end

--- @function ac_targeting_put
--- @summary Index a campaign in one shard until its end, held back before not_before (idempotent).
--- @keys targeting_index targeting_hold
--- @argv campaign_id end_ms not_before_ms (0: no hold)
--- @reply integer: 1 when the campaign is in the shard afterwards, 0 when it has ended
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG
local function targeting_put(keys, args)
  K.check(keys, NAMES)
  V.nargs(args, 3, 3)
  local id = V.id(args[1], 'campaign_id')
  local ends = V.pos(args[2], 'end_ms')
  local nb = V.uint(args[3], 'not_before_ms')
  local now = T.now_ms()
  local indexed = 0
  if ends > now then
    redis.call('ZADD', keys[1], ends, id)
    if nb > now then
      redis.call('ZADD', keys[2], nb, id)
    else
      redis.call('ZREM', keys[2], id)
    end
    indexed = 1
  else
    redis.call('ZREM', keys[1], id)
    redis.call('ZREM', keys[2], id)
  end
  prune(keys, now)
  return indexed
end

--- @function ac_targeting_remove
--- @summary Remove campaigns from one shard (idempotent).
--- @keys targeting_index targeting_hold
--- @argv campaign_id [campaign_id]... (at most 100)
--- @reply integer: how many were in the shard
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_LIMIT
local function targeting_remove(keys, args)
  K.check(keys, NAMES)
  V.nargs(args, 1)
  if #args > MAX_IDS then E.fail('ADCACHE_LIMIT', 'at most ' .. MAX_IDS .. ' ids per call') end
  for i = 1, #args do V.id(args[i], 'campaign_id') end
  local n = redis.call('ZREM', keys[1], unpack(args))
  redis.call('ZREM', keys[2], unpack(args))
  prune(keys, T.now_ms())
  return n
end

--- @function ac_targeting_query
--- @flags no-writes
--- @summary The campaigns of one shard servable now (not ended, not held); with candidate ids,
--- only those of them (the second round of a two-round query).
--- @keys targeting_index targeting_hold
--- @argv [limit (default and maximum 5000)] [campaign_id]... (at most 5000 candidates)
--- @reply array of campaign ids
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_LIMIT
local function targeting_query(keys, args)
  K.check(keys, NAMES)
  local limit = args[1] and V.pos(args[1], 'limit', MAX_QUERY) or MAX_QUERY
  if #args - 1 > MAX_QUERY then
    E.fail('ADCACHE_LIMIT', 'at most ' .. MAX_QUERY .. ' candidate ids per call')
  end
  local now = T.now_ms()
  if #args > 1 then
    local ids = {unpack(args, 2)}
    local ends = redis.call('ZMSCORE', keys[1], unpack(ids))
    local holds = redis.call('ZMSCORE', keys[2], unpack(ids))
    local out = {}
    for i, id in ipairs(ids) do
      if ends[i] and tonumber(ends[i]) > now and not (holds[i] and tonumber(holds[i]) > now) then
        out[#out + 1] = id
        if #out >= limit then break end
      end
    end
    return out
  end
  local ids = redis.call('ZRANGEBYSCORE', keys[1], '(' .. now, '+inf', 'LIMIT', 0, limit)
  local held = redis.call('ZRANGEBYSCORE', keys[2], '(' .. now, '+inf')
  if #held == 0 then return ids end
  local skip = {}
  for _, id in ipairs(held) do skip[id] = true end
  local out = {}
  for _, id in ipairs(ids) do
    if not skip[id] then out[#out + 1] = id end
  end
  return out
end

redis.register_function{function_name='ac_targeting_put', callback=targeting_put, flags={}, description='Index a campaign in one shard until its end, held back before not_before (idempotent).'}
redis.register_function{function_name='ac_targeting_remove', callback=targeting_remove, flags={}, description='Remove campaigns from one shard (idempotent).'}
redis.register_function{function_name='ac_targeting_query', callback=targeting_query, flags={'no-writes'}, description='The campaigns of one shard servable now (not ended, not held); with candidate ids, only those of them (the second round of a two-round query).'}
end

-- ==== domain: version (lua/version.lua.j2) ====
do
--@domain version: what is deployed. The renderer fills in the version and the sha256 of the
-- rendered source (computed with the hash itself zeroed).
local LIBRARY_VERSION = '0.1.0'
local LIBRARY_SHA256 = '89090b8eb73c17069567bf0aaf31b8a7988e67b66a2e8e1a289a48ae036a42f5'

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
