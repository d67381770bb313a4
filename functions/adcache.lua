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
  freqcap = {'u', '^fc$'},
  freqcap_imps = {'u', '^fcimp$'},
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
function K.freqcap(tag)
  return 'ad:{' .. tag .. '}:fc'
end
function K.freqcap_imps(tag)
  return 'ad:{' .. tag .. '}:fcimp'
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

-- ==== domain: freqcap (lua/freqcap.lua.j2) ====
do
--@domain freqcap: frequency caps per user, several windows per campaign, advertiser/campaign/creative
-- levels, batch checks and idempotent, all-or-nothing impression records.

-- Every counter of one user lives in one hash (key `freqcap`), one field per (entity, window):
--   <scope>:<entity id>|<u><end_s>  fixed calendar window ending at <end_s> (u: m h d w M) = count
--   <scope>:<entity id>|r<n>        rolling window of n seconds (recency too) = impression times
--                                   (see FC.times), at most the rule's limit of them
--   <scope>:<entity id>|L           lifetime = count
--   ~s                              when the next lazy sweep of stale fields is due (ms)
-- scope: a (advertiser), c (campaign), k (creative). A fixed field is named by its window's end, so
-- a new period is a new field: an increment can never extend a window. Impression ids live in a
-- second hash (key `freqcap_imps`): <impression id> = "<forget at ms>|<first outcome>", ~n = when
-- its next sweep is due.
--
-- A candidate travels in ARGV as: campaign_id advertiser_id creative_id n_rules, then n_rules times
-- scope window limit. advertiser_id / creative_id may be '' when no rule uses that level. window:
--   minute | hour | day | week | month, optionally @<offset_s> (zone east of UTC, |offset| < 86400)
--   rolling:<seconds> | recency:<seconds> (limit must be 1) | lifetime
local FC = {}
FC.MAX_CANDIDATES = 500
FC.MAX_RULES = 32
FC.MAX_LIMIT = 1000000000
-- A rolling rule keeps one timestamp per counted impression: its limit bounds the memory.
FC.MAX_ROLLING_LIMIT = 1000
FC.MAX_SECONDS = 366 * 86400
FC.MAX_OFFSET = 86399
FC.LIFETIME_MS = 400 * T.DAY
FC.MAX_DEDUPE_MS = 7 * T.DAY
FC.CHUNK = 1000
FC.UNIT_LETTER = {minute = 'm', hour = 'h', day = 'd', week = 'w', month = 'M'}
FC.LETTER_UNIT = {m = 'minute', h = 'hour', d = 'day', w = 'week', M = 'month'}
FC.SCOPES = {a = 'advertiser', c = 'campaign', k = 'creative'}

function FC.fmt(n) return string.format('%d', n) end

-- Parse a window token (once per call: `ctx.win` caches it) into a shared window table:
-- kind, unit/off/ends or n, and `suffix`, the field name's window part ('|d1795737600', '|r60').
function FC.window(ctx, tok, what)
  local w = ctx.win[tok]
  if w then return w end
  if type(tok) ~= 'string' then E.fail('ADCACHE_BADARG', what() .. ' window is missing') end
  w = {}
  local unit, off = string.match(tok, '^(%l+)@(%-?%d+)$')
  if not unit then unit = tok end
  local kind, n = string.match(tok, '^(%l+):(%d+)$')
  if FC.UNIT_LETTER[unit] then
    w.kind, w.unit = 'fixed', unit
    w.off = off and V.int(off, what() .. ' window offset', -FC.MAX_OFFSET, FC.MAX_OFFSET) or 0
    w.ends = T.period_end(ctx.now, unit, w.off)
    w.suffix = '|' .. FC.UNIT_LETTER[unit] .. FC.fmt(w.ends / 1000)
  elseif kind == 'rolling' or kind == 'recency' then
    w.kind, w.recency = 'rolling', kind == 'recency'
    w.n = V.pos(n, what() .. ' window seconds', FC.MAX_SECONDS)
    w.suffix = '|r' .. FC.fmt(w.n)
  elseif tok == 'lifetime' then
    w.kind, w.suffix = 'lifetime', '|L'
  else
    E.fail('ADCACHE_BADARG', what() .. ' has an unknown window ' .. tok .. ' (expected minute,'
      .. ' hour, day, week, month[@offset_s], rolling:<s>, recency:<s> or lifetime)')
  end
  ctx.win[tok] = w
  return w
end

-- 'candidate <c>[ rule <r>]', for error messages only (built when an error is raised).
function FC.what(c, r)
  return 'candidate ' .. c .. (r and (' rule ' .. r) or '')
end

-- An id, checked inline on the hot path; the error (and its message) only on failure.
function FC.id(v, c, name, optional)
  if type(v) == 'string' and #v <= K.MAX_ID and (optional or v ~= '')
    and not string.find(v, '[{}]') then
    return v
  end
  return V.id(v, FC.what(c) .. ' ' .. name)
end

-- A non-negative integer token (limit, rule count), parsed once per call.
function FC.uint(ctx, tok, c, r, name)
  local n = ctx.lim[tok]
  if n then return n end
  n = V.uint(tok, FC.what(c, r) .. ' ' .. name, FC.MAX_LIMIT)
  ctx.lim[tok] = n
  return n
end

-- A per-call context: the clock and the caches of parsed window and integer tokens.
function FC.ctx(now)
  return {now = now, win = {}, lim = {}}
end

-- Parse candidate `c` starting at args[i]; returns it and the index after it. This runs for up
-- to 500 candidates per call, so it allocates little and builds error messages only on failure.
function FC.candidate(args, i, c, ctx)
  local nargs = #args
  if nargs < i + 3 then E.fail('ADCACHE_ARITY', 'the arguments end inside ' .. FC.what(c)) end
  local campaign = FC.id(args[i], c, 'campaign_id', false)
  local adv = FC.id(args[i + 1], c, 'advertiser_id', true)
  local crv = FC.id(args[i + 2], c, 'creative_id', true)
  local n = FC.uint(ctx, args[i + 3], c, nil, 'rule count')
  if n > FC.MAX_RULES then
    E.fail('ADCACHE_LIMIT', FC.what(c) .. ' has ' .. n .. ' rules, at most ' .. FC.MAX_RULES)
  end
  local rules = {}
  i = i + 4
  for r = 1, n do
    if nargs < i + 2 then E.fail('ADCACHE_ARITY', 'the arguments end inside ' .. FC.what(c, r)) end
    local scope, tok = args[i], args[i + 1]
    local id
    if scope == 'c' then id = campaign elseif scope == 'a' then id = adv elseif scope == 'k' then
      id = crv
    else
      E.fail('ADCACHE_BADARG', FC.what(c, r) .. ' scope must be a, c or k, got ' .. tostring(scope))
    end
    if id == '' then
      E.fail('ADCACHE_BADARG', FC.what(c, r) .. ' is at ' .. FC.SCOPES[scope] .. ' level but the'
        .. ' candidate has no ' .. FC.SCOPES[scope] .. ' id')
    end
    local w = ctx.win[tok] or FC.window(ctx, tok, function() return FC.what(c, r) end)
    local limit = FC.uint(ctx, args[i + 2], c, r, 'limit')
    if w.kind == 'rolling' and (limit > FC.MAX_ROLLING_LIMIT or (w.recency and limit ~= 1)) then
      E.fail('ADCACHE_BADARG', FC.what(c, r) .. (w.recency
        and ' is a recency rule: its limit must be 1'
        or (' limit must be at most ' .. FC.MAX_ROLLING_LIMIT .. ' for a rolling window (it keeps'
          .. ' one time per impression), got ' .. limit)))
    end
    rules[r] = {scope = scope, token = tok, kind = w.kind, n = w.n, ends = w.ends, limit = limit,
      field = scope .. ':' .. id .. w.suffix}
    i = i + 3
  end
  return {campaign = campaign, rules = rules}, i
end

-- A rule as replies name it: '<level> <window token>'.
function FC.label(rule)
  return FC.SCOPES[rule.scope] .. ' ' .. rule.token
end

-- The unique counter fields of some candidates, in first-seen order.
function FC.fields(cands)
  local out, seen = {}, {}
  for _, cand in ipairs(cands) do
    for _, rule in ipairs(cand.rules) do
      if not seen[rule.field] then
        seen[rule.field] = true
        out[#out + 1] = rule.field
      end
    end
  end
  return out
end

-- field -> stored value, for the fields that exist (HMGET in chunks: unpack has a stack limit).
function FC.fetch(key, fields)
  local vals = {}
  for s = 1, #fields, FC.CHUNK do
    local part = {}
    for j = s, math.min(#fields, s + FC.CHUNK - 1) do part[#part + 1] = fields[j] end
    local got = redis.call('HMGET', key, unpack(part))
    for j = 1, #part do
      if got[j] then vals[part[j]] = got[j] end
    end
  end
  return vals
end

-- Rolling times are stored compactly: the first (epoch ms) in base 36, then each as its base-36
-- gap to the previous one, ascending, comma-separated. 10 times within an hour take ~62 bytes, so
-- the user's hash keeps its compact listpack encoding (values up to 64 bytes by default).
FC.DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'

function FC.b36(n)
  if n <= 0 then return '0' end
  local out = ''
  while n > 0 do
    local d = n % 36
    out = string.sub(FC.DIGITS, d + 1, d + 1) .. out
    n = (n - d) / 36
  end
  return out
end

function FC.times(v)
  local out = {}
  if v then
    local prev = 0
    for t in string.gmatch(v, '[^,]+') do
      local n = tonumber(t, 36)
      if not n then E.fail('ADCACHE_WRONGTYPE', 'a rolling cap field holds ' .. v) end
      prev = prev + n
      out[#out + 1] = prev
    end
  end
  return out
end

function FC.encode_times(ts, first, last)
  local parts, prev = {}, 0
  for j = first, last do
    parts[#parts + 1] = FC.b36(ts[j] - prev)
    prev = ts[j]
  end
  return table.concat(parts, ',')
end

function FC.count_of(v)
  if not v then return 0 end
  local n = tonumber(v)
  if not n then E.fail('ADCACHE_WRONGTYPE', 'a cap counter holds ' .. v) end
  return n
end

-- One rule against its stored value: remaining impressions (>= 0) and when it frees up
-- (0: not blocking, -1: never under this rule, else epoch ms).
function FC.eval(rule, v, now)
  if rule.kind == 'rolling' then
    local ts = FC.times(v)
    local from = now - rule.n * 1000
    local c = 0
    for j = #ts, 1, -1 do
      if ts[j] > from then c = c + 1 else break end
    end
    if c < rule.limit then return rule.limit - c, 0 end
    if rule.limit == 0 then return 0, -1 end
    -- The count drops below the limit when the (c - limit + 1)-th time in the window leaves it.
    return 0, ts[#ts - rule.limit + 1] + rule.n * 1000
  end
  local c = FC.count_of(v)
  if c < rule.limit then return rule.limit - c, 0 end
  if rule.kind == 'lifetime' or rule.limit == 0 then return 0, -1 end
  return 0, rule.ends
end

-- allowed (1/0), remaining (-1: no rule), blocking rule index (0: none), frees at (ms, -1 never).
-- Several blocking rules: the one that frees last is reported (the candidate waits for all).
function FC.decide(cand, vals, now)
  local remaining, idx, frees = -1, 0, 0
  for r, rule in ipairs(cand.rules) do
    local rem, f = FC.eval(rule, vals[rule.field], now)
    if remaining < 0 or rem < remaining then remaining = rem end
    if f ~= 0 and (idx == 0 or (frees ~= -1 and (f == -1 or f > frees))) then
      idx, frees = r, f
    end
  end
  if idx > 0 then return 0, 0, idx, frees end
  return 1, remaining, 0, 0
end

-- When a field becomes stale (ms); nil for lifetime and bookkeeping fields.
function FC.stale_at(field, value)
  local win = string.match(field, '|([^|]+)$')
  if not win then return nil end
  local c, rest = string.sub(win, 1, 1), string.sub(win, 2)
  if FC.LETTER_UNIT[c] then return (tonumber(rest) or 0) * 1000 end
  if c == 'r' then
    local ts = FC.times(value)
    return (ts[#ts] or 0) + (tonumber(rest) or 0) * 1000
  end
  return nil
end

function FC.hdel(key, names)
  for s = 1, #names, FC.CHUNK do
    redis.call('HDEL', key, unpack(names, s, math.min(#names, s + FC.CHUNK - 1)))
  end
end

-- Move the key's expiry to `at` unless it already expires later (never shortened).
function FC.extend(key, at)
  local cur = redis.call('PEXPIRETIME', key)
  if cur == -1 or (cur >= 0 and cur < at) then redis.call('PEXPIREAT', key, at) end
end

-- Lazy sweep: once the earliest stale time `due` (read by the caller) has passed, drop every
-- stale field of the hash. `stale(field, value)` gives a field's stale time or nil; `due_field`
-- names the bookkeeping field, which the caller rewrites. Returns the new due time (nil: nothing
-- left to sweep) and whether it swept.
function FC.sweep(key, due_field, due, now, stale)
  if not due or due > now then return due, false end
  local flat = redis.call('HGETALL', key)
  local dead, soonest = {}, nil
  for j = 1, #flat, 2 do
    if flat[j] ~= due_field then
      local s = stale(flat[j], flat[j + 1])
      if s and s <= now then
        dead[#dead + 1] = flat[j]
      elseif s and (not soonest or s < soonest) then
        soonest = s
      end
    end
  end
  FC.hdel(key, dead)
  return soonest, true
end

-- Count one impression in every window of the candidate (each field once), with one HSET that
-- also writes the sweep-due time; then move the key's expiry to its longest window.
function FC.count(key, cand, vals, now, due)
  local keep = {}
  for _, rule in ipairs(cand.rules) do
    if rule.kind == 'rolling' then keep[rule.field] = math.max(keep[rule.field] or 1, rule.limit) end
  end
  local done, hset, horizon = {}, {}, now
  for _, rule in ipairs(cand.rules) do
    local f = rule.field
    if not done[f] then
      done[f] = true
      local value, stale
      if rule.kind == 'rolling' then
        local ts, from, kept = FC.times(vals[f]), now - rule.n * 1000, {}
        for _, t in ipairs(ts) do
          if t > from then kept[#kept + 1] = t end
        end
        kept[#kept + 1] = now
        -- Gaps must not be negative, even if the clock stepped back (a failover to another host).
        if #kept > 1 and now < kept[#kept - 1] then table.sort(kept) end
        value = FC.encode_times(kept, math.max(1, #kept - keep[f] + 1), #kept)
        stale = now + rule.n * 1000
      else
        value = FC.fmt(FC.count_of(vals[f]) + 1)
        if rule.kind == 'fixed' then
          stale = rule.ends
        else
          horizon = math.max(horizon, now + FC.LIFETIME_MS)
        end
      end
      hset[#hset + 1] = f
      hset[#hset + 1] = value
      if stale then
        horizon = math.max(horizon, stale)
        if not due or stale < due then due = stale end
      end
    end
  end
  if due then
    hset[#hset + 1] = '~s'
    hset[#hset + 1] = FC.fmt(due)
  end
  if #hset > 0 then redis.call('HSET', key, unpack(hset)) end
  if horizon > now then FC.extend(key, horizon) end
end

function FC.imp_stale(_, value)
  return tonumber(string.match(value, '^(%d+)|'))
end

-- Reply of a record: admitted, remaining, rule index, rule label, frees at, duplicate.
function FC.outcome_reply(s, duplicate)
  local ok, rem, idx, frees, label = string.match(s, '^(%-?%d+)|(%-?%d+)|(%d+)|(%-?%d+)|(.*)$')
  if not ok then E.fail('ADCACHE_WRONGTYPE', 'a recorded impression holds ' .. s) end
  return {tonumber(ok), tonumber(rem), tonumber(idx), label, tonumber(frees), duplicate}
end

--- @function ac_freqcap_check
--- @flags no-writes
--- @summary For one user, which of up to 500 candidates its caps allow, and when blocked ones free up.
--- @keys freqcap
--- @argv n_candidates, then per candidate: campaign_id advertiser_id creative_id n_rules [scope window limit]...
--- @reply flat array, 5 entries per candidate in order: allowed (1/0), remaining impressions (-1 when the candidate has no rule), blocking rule index (1-based, 0 when allowed), its label ("<level> <window>", '' when allowed), frees at (epoch ms; -1 never; 0 when allowed)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE
local function freqcap_check(keys, args)
  K.check(keys, {'freqcap'})
  V.nargs(args, 1)
  local n = V.uint(args[1], 'n_candidates')
  if n > FC.MAX_CANDIDATES then
    E.fail('ADCACHE_LIMIT', 'at most ' .. FC.MAX_CANDIDATES .. ' candidates per check, got ' .. n)
  end
  local ctx = FC.ctx(T.now_ms())
  local now = ctx.now
  local cands, i = {}, 2
  for c = 1, n do
    cands[c], i = FC.candidate(args, i, c, ctx)
  end
  if i ~= #args + 1 then
    E.fail('ADCACHE_ARITY', n .. ' candidates take ' .. (i - 1) .. ' arguments, got ' .. #args)
  end
  local vals = FC.fetch(keys[1], FC.fields(cands))
  local out = {}
  for _, cand in ipairs(cands) do
    local ok, rem, idx, frees = FC.decide(cand, vals, now)
    out[#out + 1] = ok
    out[#out + 1] = rem
    out[#out + 1] = idx
    out[#out + 1] = idx > 0 and FC.label(cand.rules[idx]) or ''
    out[#out + 1] = frees
  end
  return out
end

--- @function ac_freqcap_record
--- @summary Count one impression in every window of a candidate, or refuse it counting nothing; idempotent by impression id.
--- @keys freqcap freqcap_imps
--- @argv impression_id dedupe_ttl_ms campaign_id advertiser_id creative_id n_rules [scope window limit]...
--- @reply array: admitted (1/0), remaining after it (-1 when no rule), blocking rule index (0 when admitted), its label, frees at (ms, -1 never, 0 when admitted), duplicate (1 when the impression id was seen: the first outcome is replayed and nothing is counted)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_WRONGTYPE
local function freqcap_record(keys, args)
  K.check(keys, {'freqcap', 'freqcap_imps'})
  V.nargs(args, 6)
  local imp = V.id(args[1], 'impression_id')
  local dedupe = V.pos(args[2], 'dedupe_ttl_ms', FC.MAX_DEDUPE_MS)
  local now = T.now_ms()
  local cand, i = FC.candidate(args, 3, 1, FC.ctx(now))
  if i ~= #args + 1 then
    E.fail('ADCACHE_ARITY', 'the candidate takes ' .. (i - 3) .. ' arguments after dedupe_ttl_ms, got '
      .. (#args - 2))
  end
  local seen = redis.call('HMGET', keys[2], imp, '~n')
  if seen[1] then
    local outcome = string.match(seen[1], '^%d+|(.*)$')
    return FC.outcome_reply(outcome or seen[1], 1)
  end
  local fields = FC.fields({cand})
  fields[#fields + 1] = '~s'
  local vals = FC.fetch(keys[1], fields)
  local ok, rem, idx, frees = FC.decide(cand, vals, now)
  -- First write. The sweep drops only fields outside their window, which decide() ignores anyway.
  local due, swept = FC.sweep(keys[1], '~s', tonumber(vals['~s']), now, FC.stale_at)
  if ok == 1 then
    FC.count(keys[1], cand, vals, now, due)
    if rem > 0 then rem = rem - 1 end
  elseif swept then
    if due then
      redis.call('HSET', keys[1], '~s', FC.fmt(due))
    else
      redis.call('HDEL', keys[1], '~s')
    end
  end
  local outcome = table.concat({ok, rem, idx, FC.fmt(frees),
    idx > 0 and FC.label(cand.rules[idx]) or ''}, '|')
  local forget = now + dedupe
  local ndue = FC.sweep(keys[2], '~n', tonumber(seen[2]), now, FC.imp_stale)
  if not ndue or forget < ndue then ndue = forget end
  redis.call('HSET', keys[2], imp, FC.fmt(forget) .. '|' .. outcome, '~n', FC.fmt(ndue))
  FC.extend(keys[2], forget)
  return FC.outcome_reply(outcome, 0)
end

-- The entity part ('<scope>:<id>') and window part of a counter field.
function FC.split(field)
  return string.match(field, '^(.*)|([^|]+)$')
end

--- @function ac_freqcap_reset
--- @summary Forget a user's cap counters: all of them (and the impression ids), or one advertiser's, campaign's or creative's.
--- @keys freqcap freqcap_imps
--- @argv [scope entity_id]  (scope a, c or k; none: everything of the user)
--- @reply integer: the number of counter fields removed
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG
local function freqcap_reset(keys, args)
  K.check(keys, {'freqcap', 'freqcap_imps'})
  V.nargs(args, 0, 2)
  if #args == 1 then E.fail('ADCACHE_ARITY', 'give both scope and entity_id, or neither') end
  local ent = nil
  if #args == 2 then
    if not FC.SCOPES[args[1]] then
      E.fail('ADCACHE_BADARG', 'scope must be a, c or k, got ' .. args[1])
    end
    ent = args[1] .. ':' .. V.id(args[2], 'entity_id')
  end
  local dead = {}
  for _, f in ipairs(redis.call('HKEYS', keys[1])) do
    local e = FC.split(f)
    if e and (ent == nil or e == ent) then dead[#dead + 1] = f end
  end
  if ent == nil then
    redis.call('DEL', keys[1], keys[2])
  else
    FC.hdel(keys[1], dead)
  end
  return #dead
end

--- @function ac_freqcap_inspect
--- @flags no-writes
--- @summary A user's live cap counters (for support tools), optionally of one advertiser, campaign or creative.
--- @keys freqcap
--- @argv [scope entity_id]
--- @reply flat array, 5 entries per live counter sorted by field: scope (advertiser/campaign/creative), entity id, window (minute..month, rolling:<s>, lifetime), count, ends at (fixed: window end; rolling: when the oldest counted impression leaves; lifetime: -1)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_WRONGTYPE
local function freqcap_inspect(keys, args)
  K.check(keys, {'freqcap'})
  V.nargs(args, 0, 2)
  if #args == 1 then E.fail('ADCACHE_ARITY', 'give both scope and entity_id, or neither') end
  local ent = nil
  if #args == 2 then
    if not FC.SCOPES[args[1]] then
      E.fail('ADCACHE_BADARG', 'scope must be a, c or k, got ' .. args[1])
    end
    ent = args[1] .. ':' .. V.id(args[2], 'entity_id')
  end
  local now = T.now_ms()
  local flat = redis.call('HGETALL', keys[1])
  local rows = {}
  for j = 1, #flat, 2 do
    local e, win = FC.split(flat[j])
    if e and (ent == nil or e == ent) then
      local c, rest, v = string.sub(win, 1, 1), string.sub(win, 2), flat[j + 1]
      local label, count, ends
      if FC.LETTER_UNIT[c] then
        label, count, ends = FC.LETTER_UNIT[c], FC.count_of(v), (tonumber(rest) or 0) * 1000
        if ends <= now then count = nil end
      elseif c == 'r' then
        local n = (tonumber(rest) or 0) * 1000
        local ts = FC.times(v)
        count = 0
        for k = #ts, 1, -1 do
          if ts[k] > now - n then
            count, ends = count + 1, ts[k] + n
          else
            break
          end
        end
        label = 'rolling:' .. rest
        if count == 0 then count = nil end
      else
        label, count, ends = 'lifetime', FC.count_of(v), -1
      end
      if count then
        rows[#rows + 1] = {flat[j], FC.SCOPES[string.sub(e, 1, 1)] or '?', string.sub(e, 3), label,
          count, ends}
      end
    end
  end
  table.sort(rows, function(x, y) return x[1] < y[1] end)
  local out = {}
  for _, r in ipairs(rows) do
    for k = 2, 6 do out[#out + 1] = r[k] end
  end
  return out
end

redis.register_function{function_name='ac_freqcap_check', callback=freqcap_check, flags={'no-writes'}, description='For one user, which of up to 500 candidates its caps allow, and when blocked ones free up.'}
redis.register_function{function_name='ac_freqcap_record', callback=freqcap_record, flags={}, description='Count one impression in every window of a candidate, or refuse it counting nothing; idempotent by impression id.'}
redis.register_function{function_name='ac_freqcap_reset', callback=freqcap_reset, flags={}, description='Forget a user\'s cap counters: all of them (and the impression ids), or one advertiser\'s, campaign\'s or creative\'s.'}
redis.register_function{function_name='ac_freqcap_inspect', callback=freqcap_inspect, flags={'no-writes'}, description='A user\'s live cap counters (for support tools), optionally of one advertiser, campaign or creative.'}
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
local LIBRARY_SHA256 = 'a2a674d4f6259bed63d8a26a0dd75263ff9483a73fa1b92383c244eaf4a7935a'

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
