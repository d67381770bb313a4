#!lua name=adcache
-- adcache 0.6.0: generated from lua/ by `adcache render`. Do not edit: edit lua/ and re-render.
-- Comments are stripped here; the commented sources are lua/*.lua.j2, the contracts docs/FUNCTIONS.md.

-- ==== helper: errors (lua/_errors.lua.j2) ====
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

function E.fail(code, msg)
  if not E.CODES[code] then
    msg = 'unknown error code ' .. tostring(code) .. ': ' .. tostring(msg)
    code = 'ADCACHE_WRONGTYPE'
  end
  error({err = code .. ' ' .. msg}, 0)
end

-- ==== helper: memo (lua/_memo.lua.j2) ====
local B = {}

function B.new(max, ...)
  local m = {max = max, fixed = {...}}
  B.clear(m)
  return m
end

function B.clear(m)
  local t, fixed = {}, m.fixed
  for i = 1, #fixed do t[fixed[i]] = {} end -- no ipairs: B.new runs at load, without globals
  m.t, m.n = t, 0
end

function B.put(m, kind, input, value)
  if m.n >= m.max then B.clear(m) end
  local t = m.t[kind]
  if not t then
    t = {}
    m.t[kind] = t
  end
  t[input] = value
  m.n = m.n + 1
  return value
end

-- ==== helper: keys (lua/_keys.lua.j2) ====
local K = {}
K.PREFIX = 'ad'
K.MAX_ID = 128
K.SPEC = {
  session = {'s', '^sess$'},
  session_history = {'s', '^hist$'},
  user_sessions = {'u', '^sessions$'},
  auction = {'a', '^auc$'},
  auction_bids = {'a', '^bids$'},
  freqcap = {'u', '^fc$'},
  freqcap_imps = {'u', '^fcimp$'},
  campaign = {'c', '^camp$'},
  budget = {'c', '^budget$'},
  budget_resv = {'c', '^resv$'},
  budget_resv_exp = {'c', '^resvx$'},
  budget_settled = {'c', '^settled$'},
  budget_settled_exp = {'c', '^settledx$'},
  targeting_index = {'t', '^idx$'},
  targeting_hold = {'t', '^hold$'},
  profile = {'u', '^prof$'},
  user_segments = {'u', '^segs$'},
  segment_members = {'g', '^members$'},
  segment_expiry = {'g', '^expiry$'},
  stats_meta = {'c', '^st$'},
  stats_hour = {'c', '^st:h:[^{}]+$'},
  stats_day = {'c', '^st:d:[^{}]+$'},
  stats_reach_hour = {'c', '^st:rh:[^{}]+$'},
  stats_reach_day = {'c', '^st:rd:[^{}]+$'},
  stats_dedup = {'c', '^st:ev:[^{}]+$'},
  cache_value = {'k', '^v:[^{}]+$'},
  cache_lock = {'k', '^l:[^{}]+$'},
  cache_writer = {'k', '^w:[^{}]+$'},
  cache_tag = {'k', '^t:[^{}]+$'},
  cache_stream = {'k', '^wb$'},
}

function K.split(key)
  return string.match(key, '^ad:{(%a):([^{}]+)}:(.+)$')
end

K.MAX_SEEN = 8192
K.seen = B.new(K.MAX_SEEN)
K.ONCE = {auction = true, auction_bids = true}

local function check_one(key, name, i)
  local by = K.seen.t[name]
  local tag = by and by[key]
  if tag then return tag end
  local spec = K.SPEC[name]
  local letter, id, suffix = K.split(key)
  if not letter or letter ~= spec[1] or not string.match(suffix, spec[2]) then
    E.fail('ADCACHE_BADKEY', 'KEYS[' .. i .. '] must be a ' .. name .. ' key, got ' .. key)
  end
  if #id > K.MAX_ID then
    E.fail('ADCACHE_BADKEY', 'KEYS[' .. i .. '] id is longer than ' .. K.MAX_ID .. ' bytes')
  end
  tag = letter .. ':' .. id
  if K.ONCE[name] then return tag end
  return B.put(K.seen, name, key, tag)
end

function K.check(keys, names, rest, max_rest)
  local n, nk = #names, #keys
  if nk < n or (not rest and nk ~= n) then
    E.fail('ADCACHE_ARITY', 'expected ' .. n .. (rest and ' or more' or '') .. ' keys, got ' .. nk)
  end
  if rest and max_rest and nk - n > max_rest then
    E.fail('ADCACHE_LIMIT', 'at most ' .. max_rest .. ' ' .. rest .. ' keys per call')
  end
  local tag = check_one(keys[1], names[1] or rest, 1)
  for i = 2, nk do
    local t = check_one(keys[i], names[i] or rest, i)
    if t ~= tag then
      E.fail('ADCACHE_CROSSSLOT', 'KEYS[' .. i .. '] is in {' .. t .. '}, not {' .. tag .. '}')
    end
  end
  return tag
end

function K.check1(keys, name)
  if #keys ~= 1 then E.fail('ADCACHE_ARITY', 'expected 1 keys, got ' .. #keys) end
  return check_one(keys[1], name, 1)
end

function K.wrongtype(key, what)
  E.fail('ADCACHE_WRONGTYPE', key .. ' holds another Redis type' .. (what and (', not ' .. what) or ''))
end

function K.read(cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'WRONGTYPE', 1, true) then K.wrongtype(key) end
    error(r, 0)
  end
  return r
end

function K.expect_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    E.fail('ADCACHE_WRONGTYPE', key .. ' holds a ' .. t .. ', not a ' .. want)
  end
end

function K.expect_hll(key)
  local h = K.read('GETRANGE', key, 0, 3)
  if h ~= '' and h ~= 'HYLL' then K.wrongtype(key, 'a HyperLogLog') end
end

function K.session(tag)
  return 'ad:{' .. tag .. '}:sess'
end
function K.session_history(tag)
  return 'ad:{' .. tag .. '}:hist'
end
function K.user_sessions(tag)
  return 'ad:{' .. tag .. '}:sessions'
end
function K.auction(tag)
  return 'ad:{' .. tag .. '}:auc'
end
function K.auction_bids(tag)
  return 'ad:{' .. tag .. '}:bids'
end
function K.freqcap(tag)
  return 'ad:{' .. tag .. '}:fc'
end
function K.freqcap_imps(tag)
  return 'ad:{' .. tag .. '}:fcimp'
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
local V = {}
V.MAX_INT = 999999999999999

function V.str(v, name, maxlen)
  if type(v) ~= 'string' then E.fail('ADCACHE_BADARG', name .. ' is missing') end
  if maxlen and #v > maxlen then
    E.fail('ADCACHE_BADARG', name .. ' is longer than ' .. maxlen .. ' bytes')
  end
  return v
end

function V.id(v, name)
  V.str(v, name, 128)
  if v == '' then E.fail('ADCACHE_BADARG', name .. ' must not be empty') end
  if string.find(v, '[{}]') then E.fail('ADCACHE_BADARG', name .. ' must not contain { or }') end
  return v
end

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

function V.nargs(args, min, max)
  if #args < min or (max and #args > max) then
    local want = min .. ' or more'
    if max == min then want = tostring(min) elseif max then want = min .. ' to ' .. max end
    E.fail('ADCACHE_ARITY', 'expected ' .. want .. ' arguments, got ' .. #args)
  end
end

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
local T = {}
T.SECOND, T.MINUTE, T.HOUR, T.DAY = 1000, 60000, 3600000, 86400000

function T.now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

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

function T.period_start(ms, unit, offset_s)
  if type(offset_s) == 'table' then return (T.zbounds(offset_s, ms, unit)) end
  local off = (offset_s or 0) * 1000
  local l = ms + off
  if unit == 'minute' then return l - l % T.MINUTE - off end
  if unit == 'hour' then return l - l % T.HOUR - off end
  local days = math.floor(l / T.DAY)
  if unit == 'day' then return days * T.DAY - off end
  if unit == 'week' then
    return (days - (days + 3) % 7) * T.DAY - off
  end
  local y, m = T.civil_from_days(days)
  return T.days_from_civil(y, m, 1) * T.DAY - off
end

function T.period_end(ms, unit, offset_s)
  if type(offset_s) == 'table' then return select(2, T.zbounds(offset_s, ms, unit)) end
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

function T.ymd(ms, offset_s)
  if type(offset_s) == 'table' then return select(3, T.zbounds(offset_s, ms, 'day')) end
  local y, m, d = T.civil_from_days(math.floor((ms + (offset_s or 0) * 1000) / T.DAY))
  return string.format('%04d%02d%02d', y, m, d)
end

function T.ymdh(ms, offset_s)
  if type(offset_s) == 'table' then return select(3, T.zbounds(offset_s, ms, 'hour')) end
  local l = ms + (offset_s or 0) * 1000
  return T.ymd(ms, offset_s) .. string.format('%02d', math.floor((l % T.DAY) / T.HOUR))
end

T.ZONES = {
  '<+0545>-5:45 Asia/Kathmandu',
  '<+1030>-10:30<+11>-11,M10.1.0,M4.1.0 Australia/Lord_Howe',
  '<+1245>-12:45<+1345>,M9.5.0/2:45,M4.1.0/3:45 Pacific/Chatham',
  'CET-1CEST,M3.5.0,M10.5.0/3 Europe/Paris',
  'CST6CDT,M3.2.0,M11.1.0 America/Chicago',
  'EST5EDT,M3.2.0,M11.1.0 America/New_York',
  'GMT0BST,M3.5.0/1,M10.5.0 Europe/London',
  'PST8PDT,M3.2.0,M11.1.0 America/Los_Angeles',
}
T.ZMAX = 1000
T.zc = B.new(T.ZMAX, 'zone')

function T.tzparse(s)
  local j = 1
  local function hms()
    local sg, h, m, x, k = string.match(s, '^([+-]?)(%d+)(:?%d*)(:?%d*)()', j)
    if not h or #h > 3 or #m > 3 or #x > 3 or h + 0 > 167 then return end
    j = k
    local v = h * 3600 + (tonumber(m:sub(2)) or 0) * 60 + (tonumber(x:sub(2)) or 0)
    return sg == '-' and -v or v
  end
  local function name()
    j = string.match(s, '^<[%w+-]+>()', j) or string.match(s, '^%a%a%a+()', j)
    return j
  end
  local function date()
    local k, a, w, d, e = string.match(s, '^,(J?)(%d+)()', j)
    if k then
      e, a = w, a + 0
      if a > 365 or (k == 'J' and a < 1) then return end
    else
      a, w, d, e = string.match(s, '^,M(%d%d?)%.([1-5])%.([0-6])()', j)
      if not a or a + 0 < 1 or a + 0 > 12 then return end
      k, a, w, d = 'M', a + 0, w + 0, d + 0
    end
    j = e
    local t = 7200
    if string.sub(s, j, j) == '/' then
      j = j + 1
      t = hms()
    end
    return t and {k, a, w, d, t}
  end
  local z = {c = {}}
  local std = name() and hms()
  if not std or math.abs(std) > 25 * 3600 then return end
  z.std = -std
  if j > #s then return z end
  if not name() then return end
  local dst = std - 3600
  if string.match(s, '^[+-]?%d', j) then dst = hms() end
  z.dst, z.r1 = dst and -dst, dst and date()
  z.r2 = z.r1 and date()
  if z.r2 and j > #s then return z end
end

function T.tzday(r, y)
  local f, k, a = T.days_from_civil, r[1], r[2]
  if k == 'M' then
    local first = f(y, a, 1)
    local d = first + (r[4] - (first + 4) % 7) % 7 + (r[3] - 1) * 7
    local last = a == 12 and f(y + 1, 1, 1) or f(y, a + 1, 1)
    while d >= last do d = d - 7 end
    return d
  end
  local jan1 = f(y, 1, 1)
  if k == '' or (a >= 60 and f(y, 3, 1) - jan1 == 60) then return jan1 + a end
  return jan1 + a - 1
end

function T.tzat(z, ms)
  local std, dst, huge = z.std, z.dst, math.huge
  if not dst then return std, -huge, huge, std, std end
  local y = T.civil_from_days(math.floor((ms / 1000 + std) / 86400))
  local l = {}
  for yy = y - 2, y + 1 do
    l[#l + 1] = {(T.tzday(z.r1, yy) * 86400 + z.r1[5] - std) * 1000, dst}
    l[#l + 1] = {(T.tzday(z.r2, yy) * 86400 + z.r2[5] - dst) * 1000, std}
  end
  table.sort(l, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] == std) end)
  local ch = {l[1]}
  for i = 2, #l do
    local last = ch[#ch]
    if l[i][2] ~= last[2] then ch[#ch + (l[i][1] == last[1] and 0 or 1)] = l[i] end
  end
  local k = 1
  while ch[k + 1] and ch[k + 1][1] <= ms do k = k + 1 end
  local off, p, nx = ch[k][2], ch[k - 1], ch[k + 1]
  return off, p and ch[k][1] or -huge, nx and nx[1] or huge, p and p[2] or off, nx and nx[2] or off
end

function T.zbounds(z, ms, unit, nokeep)
  local c = z.c[unit]
  if c and ms >= c[1] and ms < c[2] then return c[1], c[2], c[3] end
  local off, from, to, before, after = T.tzat(z, ms)
  local s, e, label = T.period_start(ms, unit, off), T.period_end(ms, unit, off)
  if unit == 'minute' or unit == 'hour' then
    s, e = math.max(s, from), math.min(e, to)
    local a = math.abs(off)
    label = string.format('%s%s%02d%02d', T.ymdh(ms, off), off < 0 and '-' or '+', a / 3600,
      a % 3600 / 60) .. (a % 60 > 0 and string.format('%02d', a % 60) or '')
  else
    local s1, e1 = s + (off - before) * 1000, e + (off - after) * 1000
    if s < from or s1 < from then s = s1 < from and s1 or from end
    if e >= to then e = e1 >= to and e1 or to end
    if unit == 'day' then label = T.ymd(ms, off) end
  end
  if not nokeep then z.c[unit] = {s, e, label} end
  return s, e, label
end

function T.zone(v, what, max)
  local z = T.zc.t.zone[v]
  if z then return z end
  if type(v) == 'string' and string.match(v, '^%-?%d+$') then return V.int(v, what, -max, max) end
  if not T.byname then
    T.byname = {}
    for _, line in ipairs(T.ZONES) do
      for w in string.gmatch(line, ' (%S+)') do T.byname[w] = string.match(line, '^%S+') end
    end
  end
  z = type(v) == 'string' and #v <= 128 and T.tzparse(T.byname[v] or v)
  if not z then
    E.fail('ADCACHE_BADARG', what .. ': not an offset, time zone name or POSIX TZ rule: '
      .. tostring(v):sub(1, 128))
  end
  z.key = v
  return B.put(T.zc, 'zone', v, z)
end

function T.tz(v)
  return tonumber(v) or T.zone(v, 'tz', 86399)
end

-- ==== helper: money (lua/_money.lua.j2) ====
local M = {}
M.PER_UNIT = 1000000
M.MAX = 999999999 * 1000000

function M.amount(v, name)
  return V.int(v, name, 0, M.MAX)
end

function M.positive(v, name)
  return V.int(v, name, 1, M.MAX)
end

function M.stored(v)
  return v and tonumber(v) or 0
end

-- ==== helper: metrics (lua/_metrics.lua.j2) ====
local C = {}
C.counts = {}

function C.incr(name, n)
  C.counts[name] = (C.counts[name] or 0) + (n or 1)
end

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

-- ==== helper: campaign_state (lua/_campaign_state.lua.j2) ====
local CS = {}
CS.RETAIN_MS = 30 * T.DAY
CS.DIMS = {interest = true, geo = true, device = true}

function CS.load(key)
  local flat = K.read('HGETALL', key)
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

CS.CORE = {'version', 'status', 'bid', 'budget', 'daily', 'start', 'end', 'tz', 'pacing',
  'tol_bp', 'floor', 'shards'}
function CS.require_core(key)
  local v = K.read('HMGET', key, unpack(CS.CORE))
  for i = 1, #CS.CORE do
    if not v[i] then
      if i == 1 and redis.call('EXISTS', key) == 0 then
        E.fail('ADCACHE_NOTFOUND', 'campaign ' .. key .. ' is unknown')
      end
      E.fail('ADCACHE_WRONGTYPE', key .. ' is not a campaign record')
    end
  end
  return {version = v[1], status = v[2], bid = v[3], budget = v[4], daily = v[5], start = v[6],
    ['end'] = v[7], tz = v[8], pacing = v[9], tol_bp = v[10], floor = v[11], shards = v[12]}
end

function CS.expire_at(rec, now)
  return math.max(tonumber(rec['end']), now) + CS.RETAIN_MS
end

function CS.min_cost(rec)
  local c = math.floor((tonumber(rec.bid) + 999) / 1000)
  if c < 1 then c = 1 end
  return c
end

function CS.int(v, bkey)
  if not v then return 0 end
  local n = tonumber(v)
  if not n then E.fail('ADCACHE_WRONGTYPE', bkey .. ' holds a non-integer counter: ' .. v) end
  return n
end

CS.days = B.new(1024)
function CS.today(now, tz)
  if type(tz) == 'table' then return select(3, T.zbounds(tz, now, 'day')) end -- kept by the zone
  local off = (tz or 0) * 1000
  local start = (now + off) - (now + off) % T.DAY
  local by = CS.days.t[tz]
  return by and by[start] or B.put(CS.days, tz, start, T.ymd(now, tz))
end

function CS.budget(bkey, rec, now, extra)
  local v
  if extra then
    v = K.read('HMGET', bkey, 'spent', 'day', 'dspent', 'reserved', 'swept', unpack(extra))
  else
    v = K.read('HMGET', bkey, 'spent', 'day', 'dspent', 'reserved', 'swept')
  end
  local today = CS.today(now, T.tz(rec.tz))
  local i = CS.int
  local b = {spent = i(v[1], bkey), day = today, reserved = i(v[4], bkey), rolled = v[2] ~= today,
    swept = i(v[5], bkey), dspent = 0}
  if not b.rolled then b.dspent = i(v[3], bkey) end
  if extra then
    for j, f in ipairs(extra) do b[f] = i(v[5 + j], bkey) end
  end
  return b
end

function CS.flush(bkey, b, names)
  local out = {}
  for _, f in ipairs(names) do
    out[#out + 1] = f
    out[#out + 1] = b[f]
  end
  if #out > 0 then redis.call('HSET', bkey, unpack(out)) end
end

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
    nb = math.max(nb, T.period_end(now, 'day', T.tz(rec.tz)))
  end
  return reason, true, nb
end

function CS.pacing(rec, now)
  local daily = tonumber(rec.daily)
  local tz, len = T.tz(rec.tz), T.DAY
  local start, ends = T.period_start(now, 'day', tz), nil
  if type(tz) == 'table' then start, ends = T.zbounds(tz, now, 'day') len = ends - start end
  local elapsed = now - start
  local ppm = math.floor(elapsed * 1000000 / len)
  if rec.pacing ~= 'even' or daily <= 0 then return -1, ppm end
  local allowed = tonumber(rec.floor)
    + math.floor(daily * (elapsed / len) * ((10000 + tonumber(rec.tol_bp)) / 10000))
  return math.min(allowed, daily), ppm
end

function CS.split(s)
  local out = {}
  for w in string.gmatch(s or '', '%S+') do out[#out + 1] = w end
  return out
end

-- ==== domain: auction (lua/auction.lua.j2) ====
do
local AU = {}
AU.MAX_IMPS = 32
AU.MAX_DEALS = 64 -- per auction, over all imps
AU.MAX_SEATS = 64 -- per seat list (auction wseat / bseat, deal wseat)
AU.MAX_BIDS = 256 -- stored bids per auction, refused ones included
AU.MAX_TMAX_MS = 10 * T.MINUTE
AU.MAX_TTL_MS = 7 * T.DAY
AU.MAX_URL = 2048
AU.MAX_ADOMAIN = 1024
AU.BID_FIELDS = 11
AU.WON, AU.EXPIRED, AU.BAD_DEAL = 0, 2, 4
AU.BELOW_FLOOR, AU.BELOW_DEAL_FLOOR, AU.OUTBID, AU.SEAT_BLOCKED = 100, 101, 102, 104
AU.PAIR = {'auction', 'auction_bids'}

function AU.take(r, what)
  local v = r.args[r.i]
  if v == nil then E.fail('ADCACHE_ARITY', 'missing ' .. what .. ' (argument ' .. r.i .. ')') end
  r.i = r.i + 1
  return v
end

function AU.count(v, name, max)
  local n = V.uint(v, name)
  if n > max then E.fail('ADCACHE_LIMIT', 'at most ' .. max .. ' ' .. name .. ', got ' .. n) end
  return n
end

function AU.seats(r, name)
  local n = AU.count(AU.take(r, name .. ' count'), name, AU.MAX_SEATS)
  local set = {}
  for _ = 1, n do set[V.id(AU.take(r, name), name)] = true end
  return set
end

function AU.is_empty(t) return next(t) == nil end
AU.NONE = {} -- an empty seat set (read only)

function AU.bid_key(seat, id)
  return #seat .. ':' .. seat .. ':' .. id
end

function AU.opt_id(v, name)
  if v == '' then return '' end
  return V.id(v, name)
end

function AU.missing(key)
  if redis.call('EXISTS', key) == 1 then
    E.fail('ADCACHE_WRONGTYPE', key .. ' is not an auction record')
  end
  E.fail('ADCACHE_NOTFOUND', 'auction ' .. key .. ' is unknown or expired')
end

function AU.load(key, optional)
  local flat = K.read('HGETALL', key)
  if #flat == 0 then
    if optional then return false end
    AU.missing(key)
  end
  local m = {}
  for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
  if not m.state or not m.imps or not m.deadline then
    E.fail('ADCACHE_WRONGTYPE', key .. ' is not an auction record')
  end
  return m
end

function AU.unpack(v, what)
  local ok, t = false, nil
  if type(v) == 'string' then ok, t = pcall(cmsgpack.unpack, v) end
  if not ok or type(t) ~= 'table' then
    E.fail('ADCACHE_WRONGTYPE', what .. ' does not hold an adcache record')
  end
  return t
end

function AU.load_bids(bids_key)
  local flat = K.read('HGETALL', bids_key)
  local list = {}
  for i = 1, #flat, 2 do
    local rec = AU.unpack(flat[i + 1], 'bid ' .. flat[i])
    rec.k = flat[i]
    list[#list + 1] = rec
  end
  table.sort(list, function(a, b) return a.q < b.q end)
  return list
end

function AU.parse_bids(args, min)
  local F = AU.BID_FIELDS
  if #args < min * F or #args % F ~= 0 then
    E.fail('ADCACHE_ARITY', 'bids come as groups of ' .. F .. ' arguments, got ' .. #args)
  end
  if #args / F > AU.MAX_BIDS then
    E.fail('ADCACHE_LIMIT', 'at most ' .. AU.MAX_BIDS .. ' bids per call')
  end
  local bids, ids = {}, {}
  for base = 1, #args, F do
    local b = {}
    b.s = V.id(args[base], 'seat')
    b.id = V.id(args[base + 1], 'bid id')
    b.i = V.id(args[base + 2], 'imp id')
    b.p = M.amount(args[base + 3], 'price_micros')
    b.k = AU.bid_key(b.s, b.id)
    b.d = AU.opt_id(args[base + 4], 'deal id')
    b.c = AU.opt_id(args[base + 5], 'cid')
    b.r = AU.opt_id(args[base + 6], 'crid')
    b.a = V.str(args[base + 7], 'adomain', AU.MAX_ADOMAIN)
    b.n = V.str(args[base + 8], 'nurl', AU.MAX_URL)
    b.l = V.str(args[base + 9], 'lurl', AU.MAX_URL)
    b.b = V.str(args[base + 10], 'burl', AU.MAX_URL)
    bids[#bids + 1] = b
    ids[#ids + 1] = b.k
  end
  return bids, ids
end

function AU.room(bids, stored, seq)
  local fresh, seen = 0, {}
  for k, b in ipairs(bids) do
    if not stored[k] and not seen[b.k] then fresh = fresh + 1 end
    seen[b.k] = true
  end
  if seq + fresh > AU.MAX_BIDS then
    E.fail('ADCACHE_LIMIT', 'at most ' .. AU.MAX_BIDS .. ' bids per auction')
  end
end

function AU.judge(bids, stored, cfg, ws, bs, state, seq)
  local out, replies, records = {}, {}, {}
  for k, b in ipairs(bids) do
    local prev = replies[b.k]
    if not prev and stored[k] then
      local rec = stored[k]
      if type(rec) ~= 'table' then rec = AU.unpack(rec, 'bid ' .. b.id) end
      prev = {b.id, rec.st == 1 and 'accepted' or 'rejected', rec.rs, rec.q}
    end
    if prev then
      out[k] = {prev[1], prev[2], prev[3], prev[4], 1}
    else
      local c = cfg[b.i]
      local reason = AU.WON
      if state ~= 'open' then
        reason = AU.EXPIRED
      elseif bs[b.s] or (not AU.is_empty(ws) and not ws[b.s]) then
        reason = AU.SEAT_BLOCKED
      elseif b.d ~= '' then
        local deal = c.d[b.d]
        if not deal then
          reason = AU.BAD_DEAL
        elseif not AU.is_empty(deal.w) and not deal.w[b.s] then
          reason = AU.SEAT_BLOCKED
        elseif b.p < deal.f then
          reason = AU.BELOW_DEAL_FLOOR
        end
      elseif c.p == 1 then
        reason = AU.BAD_DEAL -- a private auction takes deal bids only
      elseif b.p < c.f then
        reason = AU.BELOW_FLOOR
      end
      seq = seq + 1
      b.q, b.st, b.rs = seq, reason == AU.WON and 1 or 0, reason
      local key = b.k
      b.k = nil
      records[#records + 1] = key
      records[#records + 1] = cmsgpack.pack(b)
      b.k = key
      replies[key] = {b.id, b.st == 1 and 'accepted' or 'rejected', reason, seq}
      out[k] = {b.id, replies[key][2], reason, seq, 0}
      if b.st == 1 then
        C.incr('bids_accepted')
      else
        C.incr('bids_rejected')
        C.incr('bids_lost_' .. reason)
      end
    end
  end
  return out, records, seq
end

function AU.config(m)
  local order = AU.unpack(m.imps, 'auction imps')
  local cfg = {}
  for _, imp in ipairs(order) do cfg[imp] = AU.unpack(m['i.' .. imp], 'imp ' .. imp) end
  return order, cfg
end

function AU.floor(c, deal)
  if deal ~= '' and c.d[deal] then return c.d[deal].f end
  return c.f
end

function AU.outcome(at, inc, cfg, list)
  local best, second = {}, {}
  for _, b in ipairs(list) do -- arrival order: a later equal price never displaces the best
    if b.st == 1 then
      local cur = best[b.i]
      if not cur or b.p > cur.p then
        second[b.i], best[b.i] = cur, b
      elseif not second[b.i] or b.p > second[b.i].p then
        second[b.i] = b
      end
    end
  end
  local res = {}
  for imp, w in pairs(best) do
    local clear = w.p
    local deal = w.d ~= '' and cfg[imp].d[w.d] or nil
    local kind = at
    if deal and deal.a and deal.a ~= 0 then kind = deal.a end -- the deal overrides the type
    if kind == 3 then
      clear = deal.f -- fixed-price deal: the agreed price, which an accepted bid never undercuts
    elseif kind == 2 then
      local base = second[imp] and second[imp].p or 0
      local floor = AU.floor(cfg[imp], w.d)
      if floor > base then base = floor end
      clear = math.min(w.p, base + inc)
    end
    res[imp] = {w = w.k, c = clear}
  end
  return res
end

function AU.close(key, m, list, now, seq, cfg)
  if not cfg then
    local _
    _, cfg = AU.config(m)
  end
  local res = AU.outcome(tonumber(m.at), tonumber(m.inc), cfg, list)
  local fields = {'state', 'closed', 'closed', now}
  if seq then
    fields[5], fields[6] = 'seq', seq
  end
  m.state, m.closed = 'closed', tostring(now)
  for imp, r in pairs(res) do
    local packed = cmsgpack.pack(r)
    fields[#fields + 1] = 'r.' .. imp
    fields[#fields + 1] = packed
    m['r.' .. imp] = packed
  end
  redis.call('HSET', key, unpack(fields))
  C.incr('auctions_closed')
  local won, accepted = 0, 0
  for _, b in ipairs(list) do
    if b.st == 1 then accepted = accepted + 1 end
  end
  for _ in pairs(res) do won = won + 1 end
  C.incr('bids_won', won)
  C.incr('bids_lost_' .. AU.OUTBID, accepted - won)
  return res
end

function AU.result_reply(m, list, now)
  local order, cfg = AU.config(m)
  local deadline = tonumber(m.deadline)
  local state = m.state
  local res = {}
  if state == 'closed' then
    for _, imp in ipairs(order) do
      local r = m['r.' .. imp]
      if r then res[imp] = AU.unpack(r, 'result of imp ' .. imp) end
    end
  elseif now >= deadline then
    state = 'due'
    res = AU.outcome(tonumber(m.at), tonumber(m.inc), cfg, list)
  end
  local closed = m.closed and tonumber(m.closed) or 0
  local ended = deadline
  if closed > 0 and closed < deadline then ended = closed end
  local by_key = {}
  for _, b in ipairs(list) do by_key[b.k] = b end
  local imps = {}
  for _, imp in ipairs(order) do
    local r = res[imp]
    local w = r and by_key[r.w]
    imps[#imps + 1] = {imp, cfg[imp].f, cfg[imp].p, w and w.s or '', w and w.id or '',
      r and r.c or 0, m['b.' .. imp] and 1 or 0}
  end
  local bids = {}
  for _, b in ipairs(list) do
    local status, reason = 'rejected', b.rs
    if b.st == 1 then
      local r = res[b.i]
      if state == 'open' then
        status, reason = 'pending', AU.WON
      elseif r and r.w == b.k then
        status, reason = 'won', AU.WON
      else
        status, reason = 'lost', AU.OUTBID
      end
    end
    bids[#bids + 1] = {b.id, b.i, b.s, b.p, b.d, b.c, b.r, b.a, b.n, b.l, b.b, b.q, status, reason,
      AU.floor(cfg[b.i], b.d)}
  end
  return {'state', state, 'at', tonumber(m.at), 'increment', tonumber(m.inc),
    'created', tonumber(m.created), 'deadline', deadline, 'closed', closed, 'ended', ended,
    'exp', tonumber(m.exp), 'expires', tonumber(m.expires), 'imps', imps, 'bids', bids}
end

function AU.create(key, args, bids_key)
  V.nargs(args, 8)
  local r = {args = args, i = 1}
  local at = V.int(AU.take(r, 'at'), 'at', 1, 2)
  local tmax = V.pos(AU.take(r, 'tmax_ms'), 'tmax_ms', AU.MAX_TMAX_MS)
  local exp = V.pos(AU.take(r, 'exp_ms'), 'exp_ms', AU.MAX_TTL_MS)
  local ttl = V.pos(AU.take(r, 'ttl_ms'), 'ttl_ms', AU.MAX_TTL_MS)
  local inc = M.amount(AU.take(r, 'increment_micros'), 'increment_micros')
  if ttl < tmax + exp then
    E.fail('ADCACHE_BADARG', 'ttl_ms must cover tmax_ms + exp_ms (' .. (tmax + exp) .. '), got '
      .. ttl)
  end
  local wseat = AU.seats(r, 'wseat')
  local bseat = AU.seats(r, 'bseat')
  local nimps = AU.count(AU.take(r, 'imp count'), 'imps', AU.MAX_IMPS)
  if nimps == 0 then E.fail('ADCACHE_BADARG', 'an auction needs at least one imp') end
  local order, imps, ndeals = {}, {}, 0
  for _ = 1, nimps do
    local id = V.id(AU.take(r, 'imp id'), 'imp id')
    if imps[id] then E.fail('ADCACHE_BADARG', 'imp id ' .. id .. ' is given twice') end
    local floor = M.amount(AU.take(r, 'imp floor'), 'floor of imp ' .. id)
    local private = V.int(AU.take(r, 'private flag'), 'private_auction of imp ' .. id, 0, 1)
    local nd = AU.count(AU.take(r, 'deal count'), 'deals', AU.MAX_DEALS)
    local deals = {}
    for _ = 1, nd do
      local did = V.id(AU.take(r, 'deal id'), 'deal id')
      if deals[did] then E.fail('ADCACHE_BADARG', 'deal ' .. did .. ' is given twice') end
      local dfloor = M.amount(AU.take(r, 'deal floor'), 'floor of deal ' .. did)
      local dat = V.int(AU.take(r, 'deal at'), 'at of deal ' .. did, 0, 3)
      deals[did] = {f = dfloor, a = dat, w = AU.seats(r, 'deal wseat')}
      ndeals = ndeals + 1
      if ndeals > AU.MAX_DEALS then
        E.fail('ADCACHE_LIMIT', 'at most ' .. AU.MAX_DEALS .. ' deals per auction')
      end
    end
    if private == 1 and nd == 0 then
      E.fail('ADCACHE_BADARG', 'imp ' .. id .. ' is a private auction without deals')
    end
    order[#order + 1] = id
    imps[id] = {f = floor, p = private, d = deals}
  end
  if r.i <= #args then
    E.fail('ADCACHE_ARITY', 'unexpected argument ' .. r.i .. ' after the last imp')
  end
  if bids_key then
    local m = AU.load(key, true)
    if m then return AU.result_reply(m, AU.load_bids(bids_key), T.now_ms()) end
  else
    local t = redis.call('TYPE', key)['ok']
    if t == 'hash' then E.fail('ADCACHE_EXISTS', 'auction ' .. key .. ' exists') end
    if t ~= 'none' then K.wrongtype(key, 'a hash') end
  end
  local now = T.now_ms()
  local deadline, expires = now + tmax, now + ttl
  local fields = {'state', 'open', 'at', at, 'inc', inc, 'created', now, 'deadline', deadline,
    'exp', exp, 'expires', expires, 'seq', 0, 'imps', cmsgpack.pack(order)}
  if not AU.is_empty(wseat) then
    fields[#fields + 1] = 'ws'
    fields[#fields + 1] = cmsgpack.pack(wseat)
  end
  if not AU.is_empty(bseat) then
    fields[#fields + 1] = 'bs'
    fields[#fields + 1] = cmsgpack.pack(bseat)
  end
  for _, id in ipairs(order) do
    fields[#fields + 1] = 'i.' .. id
    fields[#fields + 1] = cmsgpack.pack(imps[id])
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('PEXPIREAT', key, expires)
  C.incr('auctions_created')
  if bids_key then return false end
  return {'created', now, 'deadline', deadline, 'expires', expires}
end

local function auction_create(keys, args)
  K.check1(keys, 'auction')
  return AU.create(keys[1], args)
end

local function auction_bid(keys, args)
  K.check(keys, AU.PAIR)
  local bids, ids = AU.parse_bids(args, 1)
  local fields = {'state', 'deadline', 'ws', 'bs', 'expires', 'seq'}
  local imp_at = {}
  for _, b in ipairs(bids) do
    if not imp_at[b.i] then
      fields[#fields + 1] = 'i.' .. b.i
      imp_at[b.i] = #fields
    end
  end
  local vals = K.read('HMGET', keys[1], unpack(fields))
  if not vals[1] then AU.missing(keys[1]) end
  local cfg = {}
  for imp, n in pairs(imp_at) do
    if not vals[n] then
      E.fail('ADCACHE_BADARG', 'imp ' .. imp .. ' is not part of auction ' .. keys[1])
    end
    cfg[imp] = AU.unpack(vals[n], 'imp ' .. imp)
  end
  local ws = vals[3] and AU.unpack(vals[3], 'wseat') or AU.NONE
  local bs = vals[4] and AU.unpack(vals[4], 'bseat') or AU.NONE
  local deadline, expires, seq = tonumber(vals[2]), tonumber(vals[5]), tonumber(vals[6])
  if not (deadline and expires and seq) then
    E.fail('ADCACHE_WRONGTYPE', keys[1] .. ' is not an auction record')
  end
  local stored = K.read('HMGET', keys[2], unpack(ids))
  AU.room(bids, stored, seq)
  local now = T.now_ms()
  local state = vals[1]
  if state == 'open' and now >= deadline then
    AU.close(keys[1], AU.load(keys[1]), AU.load_bids(keys[2]), now)
    state = 'closed'
  end
  local out, records
  out, records, seq = AU.judge(bids, stored, cfg, ws, bs, state, seq)
  if #records > 0 then
    redis.call('HSET', keys[2], unpack(records))
    redis.call('PEXPIREAT', keys[2], expires)
    redis.call('HSET', keys[1], 'seq', seq)
  end
  return out
end

local function auction_close(keys, args)
  K.check(keys, AU.PAIR)
  V.nargs(args, 0, 0)
  local m = AU.load(keys[1])
  local list = AU.load_bids(keys[2])
  local now = T.now_ms()
  if m.state ~= 'closed' then AU.close(keys[1], m, list, now) end
  return AU.result_reply(m, list, now)
end

local function auction_result(keys, args)
  K.check(keys, AU.PAIR)
  V.nargs(args, 0, 0)
  local m = AU.load(keys[1], true)
  if not m then return false end
  return AU.result_reply(m, AU.load_bids(keys[2]), T.now_ms())
end

local function auction_bill(keys, args)
  K.check(keys, AU.PAIR)
  V.nargs(args, 2, 2)
  local seat = V.id(args[1], 'seat')
  local bid_id = V.id(args[2], 'bid id')
  local key = AU.bid_key(seat, bid_id)
  local m = AU.load(keys[1])
  local stored = K.read('HGET', keys[2], key)
  if not stored then return {'unknown_bid', 0, ''} end
  local imp = AU.unpack(stored, 'bid ' .. bid_id).i
  local now = T.now_ms()
  local deadline = tonumber(m.deadline)
  if m.state ~= 'closed' then
    if now < deadline then return {'open', 0, imp} end
    AU.close(keys[1], m, AU.load_bids(keys[2]), now)
  end
  local r = m['r.' .. imp] and AU.unpack(m['r.' .. imp], 'result of imp ' .. imp)
  if not r or r.w ~= key then return {'not_won', 0, imp} end
  if m['b.' .. imp] then return {'already_billed', r.c, imp} end
  local ended = math.min(tonumber(m.closed), deadline)
  if now > ended + tonumber(m.exp) then return {'expired', 0, imp} end
  redis.call('HSET', keys[1], 'b.' .. imp, now)
  return {'billed', r.c, imp}
end

local function auction_open(keys, args)
  K.check(keys, AU.PAIR)
  return AU.create(keys[1], args, keys[2])
end

local function auction_bid_close(keys, args)
  K.check(keys, AU.PAIR)
  local bids = AU.parse_bids(args, 0)
  local m = AU.load(keys[1])
  local order, cfg = AU.config(m)
  local deadline, expires, seq = tonumber(m.deadline), tonumber(m.expires), tonumber(m.seq)
  if not (deadline and expires and seq) then
    E.fail('ADCACHE_WRONGTYPE', keys[1] .. ' is not an auction record')
  end
  local list = seq > 0 and AU.load_bids(keys[2]) or {}
  local by_k, stored = {}, {}
  for _, b in ipairs(list) do by_k[b.k] = b end
  for k, b in ipairs(bids) do
    if not cfg[b.i] then
      E.fail('ADCACHE_BADARG', 'imp ' .. b.i .. ' is not part of auction ' .. keys[1])
    end
    stored[k] = by_k[b.k]
  end
  local ws = m.ws and AU.unpack(m.ws, 'wseat') or AU.NONE
  local bs = m.bs and AU.unpack(m.bs, 'bseat') or AU.NONE
  AU.room(bids, stored, seq)
  local now = T.now_ms()
  local state = m.state
  if state == 'open' and now >= deadline then state = 'due' end
  local _, records
  _, records, seq = AU.judge(bids, stored, cfg, ws, bs, state, seq)
  for _, b in ipairs(bids) do
    if b.q then
      list[#list + 1] = b
      by_k[b.k] = b
    end
  end
  local new = #records > 0 and seq or nil
  if new then
    K.read('HSET', keys[2], unpack(records))
    redis.call('PEXPIREAT', keys[2], expires)
  end
  local res
  if m.state ~= 'closed' then
    res = AU.close(keys[1], m, list, now, new, cfg)
  else
    if new then redis.call('HSET', keys[1], 'seq', seq) end
    res = {}
    for _, imp in ipairs(order) do
      local r = m['r.' .. imp]
      if r then res[imp] = AU.unpack(r, 'result of imp ' .. imp) end
    end
  end
  local out, n = {}, 0
  for _, imp in ipairs(order) do
    local r = res[imp]
    local w = r and by_k[r.w]
    if w then
      out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = imp, w.c, w.p, w.r, r.c
    else
      out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = imp, '', 0, '', 0
    end
    n = n + 5
  end
  return out
end


redis.register_function{function_name='ac_auction_create', callback=auction_create, flags={}, description='Create the auction of one OpenRTB request: imps with floors and deals, type, deadline.'}
redis.register_function{function_name='ac_auction_bid', callback=auction_bid, flags={}, description='Submit one or more bids atomically; each is accepted or refused with a loss reason.'}
redis.register_function{function_name='ac_auction_close', callback=auction_close, flags={}, description='Close the auction (idempotent): record per imp the winner and the clearing price.'}
redis.register_function{function_name='ac_auction_result', callback=auction_result, flags={'no-writes'}, description='Read the auction: state, per imp the winner and clearing price, per bid the outcome.'}
redis.register_function{function_name='ac_auction_bill', callback=auction_bill, flags={}, description='Billing notice (burl) of a winning bid: the first call charges, later ones do not.'}
redis.register_function{function_name='ac_auction_open', callback=auction_open, flags={}, description='Create the auction, or read it when it exists: ac_auction_create and ac_auction_result in one call.'}
redis.register_function{function_name='ac_auction_bid_close', callback=auction_bid_close, flags={}, description='Submit bids, then close the auction: ac_auction_bid and ac_auction_close in one call, replying each imp\'s winner only.'}
end

-- ==== domain: budget (lua/budget.lua.j2) ====
do
local KEEP_MS = T.HOUR
local MAX_TTL_MS = T.DAY
local SWEEP = 100 -- most expired reservations reclaimed (and settled entries forgotten) per call
local SWEEP_EVERY_MS = 250
local NAMES = {'campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled',
  'budget_settled_exp'}
local RESERVE_C = {'c_reserved'}
local COMMIT_C = {'c_committed', 'c_released'}
local RELEASE_C = {'c_released'}
local STATE_C = {'c_reserved', 'c_committed', 'c_released', 'c_reclaimed', 'c_late', 'n_refused'}
local STATE_WORD = {c = 'committed', l = 'late', f = 'refused', r = 'released', x = 'expired'}

local function parse_settled(v)
  local st, charged, released = string.match(v, '^(%a):(%d+):(%d+)$')
  if not st or not STATE_WORD[st] then E.fail('ADCACHE_WRONGTYPE', 'bad settled entry ' .. v) end
  return st, tonumber(charged), tonumber(released)
end

local function mark(b, f)
  if not b.marked[f] then
    b.marked[f] = true
    b.w[#b.w + 1] = f
  end
end

local function hk_read(keys, rec, now, extra, force)
  local b = CS.budget(keys[2], rec, now, extra)
  b.w, b.marked = {}, {}
  if b.rolled then
    mark(b, 'day')
    mark(b, 'dspent')
  end
  if force or now >= b.swept + SWEEP_EVERY_MS then
    b.old = K.read('ZRANGEBYSCORE', keys[6], '-inf', now, 'LIMIT', 0, SWEEP)
    b.due = K.read('ZRANGEBYSCORE', keys[4], '-inf', now, 'LIMIT', 0, SWEEP)
    if #b.due > 0 then b.amounts = K.read('HMGET', keys[3], unpack(b.due)) end
  end
  return b
end

local function hk_write(keys, b, now, keep)
  if not b.old then return end
  b.swept = now
  mark(b, 'swept')
  local old = b.old
  if keep then
    local kept = {}
    for _, rid in ipairs(old) do
      if rid ~= keep then kept[#kept + 1] = rid end
    end
    old = kept
  end
  if #old > 0 then
    redis.call('HDEL', keys[5], unpack(old))
    redis.call('ZREM', keys[6], unpack(old))
  end
  local due = b.due
  if #due > 0 then
    local back, hs, zs = 0, {}, {}
    b.gone = {}
    for i, rid in ipairs(due) do
      local amt = M.stored(b.amounts[i])
      back = back + amt
      hs[#hs + 1] = rid
      hs[#hs + 1] = 'x:' .. amt .. ':0'
      zs[#zs + 1] = now + KEEP_MS
      zs[#zs + 1] = rid
      b.gone[rid] = true
    end
    redis.call('HSET', keys[5], unpack(hs))
    redis.call('ZADD', keys[6], unpack(zs))
    redis.call('HDEL', keys[3], unpack(due))
    redis.call('ZREM', keys[4], unpack(due))
    redis.call('HINCRBY', keys[2], 'c_reclaimed', back)
    if b.c_reclaimed then b.c_reclaimed = b.c_reclaimed + back end
    b.reserved = b.reserved - back
    mark(b, 'reserved')
  end
end

local function finish(keys, rec, now, b)
  CS.flush(keys[2], b, b.w)
  if b.old then
    local at = CS.expire_at(rec, now)
    for i = 2, 6 do redis.call('PEXPIREAT', keys[i], at) end
  end
end

local function arm(keys, i, rec, now)
  if redis.call('HLEN', keys[i]) == 1 then
    local at = CS.expire_at(rec, now)
    redis.call('PEXPIREAT', keys[i], at)
    redis.call('PEXPIREAT', keys[i + 1], at)
  end
end

local function reserve_reply(status, reason, amount, expires, b, allowed, replay)
  return {'status', status, 'reason', reason, 'amount', amount, 'expires_at', expires,
    'spent', b.spent, 'day_spent', b.dspent, 'reserved', b.reserved,
    'pacing_allowed', allowed, 'replay', replay}
end

local function budget_reserve(keys, args)
  K.check(keys, NAMES)
  if #args ~= 3 then V.nargs(args, 3, 3) end
  local rid = V.id(args[1], 'reservation_id')
  local amount = M.positive(args[2], 'amount')
  local ttl = V.pos(args[3], 'ttl_ms', MAX_TTL_MS)
  local rec = CS.require_core(keys[1])
  if K.read('HEXISTS', keys[5], rid) == 1 then
    E.fail('ADCACHE_STATE', 'reservation ' .. rid .. ' is already settled')
  end
  local now = T.now_ms()
  local have = K.read('HGET', keys[3], rid)
  local exp = tonumber(K.read('ZSCORE', keys[4], rid) or 0)
  if have and tonumber(have) ~= amount then
    E.fail('ADCACHE_EXISTS', 'reservation ' .. rid .. ' holds ' .. have .. ', not ' .. amount)
  end
  local b = hk_read(keys, rec, now, RESERVE_C)
  hk_write(keys, b, now)
  local allowed = CS.pacing(rec, now)
  if have then
    finish(keys, rec, now, b)
    if exp > now then return reserve_reply('reserved', '', amount, exp, b, allowed, 1) end
    return reserve_reply('refused', 'expired', amount, exp, b, allowed, 1) -- reclaimed by the next sweep
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
    finish(keys, rec, now, b)
    C.incr('budget_refused_' .. reason)
    return reserve_reply('refused', reason, amount, 0, b, allowed, 0)
  end
  redis.call('HSET', keys[3], rid, amount)
  redis.call('ZADD', keys[4], now + ttl, rid)
  arm(keys, 3, rec, now)
  b.c_reserved = b.c_reserved + amount
  b.reserved = b.reserved + amount
  mark(b, 'c_reserved')
  mark(b, 'reserved')
  finish(keys, rec, now, b)
  return reserve_reply('reserved', '', amount, now + ttl, b, allowed, 0)
end

local function commit_reply(rec, b, now, st, charged, released, replay)
  local reason, indexable, nb = CS.assess(rec, b, now)
  local exhausted = ''
  if reason == 'lifetime_budget' or reason == 'daily_budget' then exhausted = reason end
  return {'status', STATE_WORD[st], 'charged', charged, 'released', released, 'spent', b.spent,
    'day_spent', b.dspent, 'reserved', b.reserved, 'exhausted', exhausted,
    'indexable', indexable and 1 or 0, 'not_before', nb, 'end', tonumber(rec['end']),
    'shards', rec.shards, 'replay', replay}
end

local function budget_commit(keys, args)
  K.check(keys, NAMES)
  if #args ~= 2 then V.nargs(args, 2, 2) end
  local rid = V.id(args[1], 'reservation_id')
  local amount = M.amount(args[2], 'amount')
  local rec = CS.require_core(keys[1])
  local now = T.now_ms()
  local late, held, have = false, 0, nil
  local settled = K.read('HGET', keys[5], rid)
  if settled then
    local st, charged, released = parse_settled(settled)
    if st == 'r' then E.fail('ADCACHE_STATE', 'reservation ' .. rid .. ' was released') end
    if st ~= 'x' then
      return commit_reply(rec, CS.budget(keys[2], rec, now), now, st, charged, released, 1)
    end
    late, held = true, charged
    have = K.read('HGET', keys[3], rid)
    K.read('ZSCORE', keys[4], rid)
  else
    have = K.read('HGET', keys[3], rid)
    if not have then E.fail('ADCACHE_NOTFOUND', 'no reservation ' .. rid) end
    held = tonumber(have)
    late = tonumber(K.read('ZSCORE', keys[4], rid) or 0) <= now
  end
  if amount > held then
    E.fail('ADCACHE_BADARG', 'amount ' .. amount .. ' is above the reservation ' .. held)
  end
  local b = hk_read(keys, rec, now, COMMIT_C)
  K.read('ZADD', keys[6], now + KEEP_MS, rid)
  hk_write(keys, b, now, rid) -- reclaims this reservation too when it is late
  if b.gone and b.gone[rid] then have = nil end
  local st, released = 'c', held - amount
  if late then
    released = 0
    if have then
      redis.call('HDEL', keys[3], rid)
      redis.call('ZREM', keys[4], rid)
      redis.call('HINCRBY', keys[2], 'c_reclaimed', held)
      b.reserved = b.reserved - held
      mark(b, 'reserved')
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
    b.reserved = b.reserved - held
    b.c_committed = b.c_committed + amount
    b.c_released = b.c_released + released
    mark(b, 'reserved')
    mark(b, 'c_committed')
    mark(b, 'c_released')
  end
  if amount > 0 then
    b.spent = b.spent + amount
    b.dspent = b.dspent + amount
    mark(b, 'spent')
    mark(b, 'dspent')
  end
  redis.call('HSET', keys[5], rid, st .. ':' .. amount .. ':' .. released)
  arm(keys, 5, rec, now)
  finish(keys, rec, now, b)
  return commit_reply(rec, b, now, st, amount, released, 0)
end

local function budget_release(keys, args)
  K.check(keys, NAMES)
  V.nargs(args, 1, 1)
  local rid = V.id(args[1], 'reservation_id')
  local rec = CS.require_core(keys[1])
  local settled = K.read('HGET', keys[5], rid)
  if settled then parse_settled(settled) end
  local now = T.now_ms()
  local have = K.read('HGET', keys[3], rid)
  if have then K.read('ZSCORE', keys[4], rid) end
  local b = hk_read(keys, rec, now, RELEASE_C)
  if have then K.read('ZADD', keys[6], now + KEEP_MS, rid) end
  hk_write(keys, b, now, have and rid)
  if b.gone and b.gone[rid] then
    have, settled = nil, 'x:' .. M.stored(have) .. ':0'
  end
  if have then
    local amt = tonumber(have)
    redis.call('HDEL', keys[3], rid)
    redis.call('ZREM', keys[4], rid)
    b.c_released = b.c_released + amt
    b.reserved = b.reserved - amt
    mark(b, 'c_released')
    mark(b, 'reserved')
    redis.call('HSET', keys[5], rid, 'r:0:' .. amt)
    arm(keys, 5, rec, now)
    finish(keys, rec, now, b)
    return {'status', 'released', 'amount', amt, 'reserved', b.reserved, 'replay', 0}
  end
  finish(keys, rec, now, b)
  if settled then
    local st = parse_settled(settled)
    return {'status', STATE_WORD[st], 'amount', 0, 'reserved', b.reserved, 'replay', 1}
  end
  return {'status', 'unknown', 'amount', 0, 'reserved', b.reserved, 'replay', 0}
end

local function budget_state(keys, args)
  K.check(keys, NAMES)
  V.nargs(args, 0, 0)
  local rec = CS.require_core(keys[1])
  local now = T.now_ms()
  local b = hk_read(keys, rec, now, STATE_C, true)
  local outstanding = K.read('HLEN', keys[3])
  K.read('HLEN', keys[5]) -- the sweep writes it: check its type before the first write
  hk_write(keys, b, now)
  finish(keys, rec, now, b)
  for i = 1, #b.due do
    if b.amounts[i] then outstanding = outstanding - 1 end
  end
  local allowed, ppm = CS.pacing(rec, now)
  local tz = T.tz(rec.tz)
  local reason = CS.assess(rec, b, now)
  return {'budget', tonumber(rec.budget), 'daily', tonumber(rec.daily), 'spent', b.spent,
    'day', b.day, 'day_spent', b.dspent, 'reserved', b.reserved,
    'outstanding', outstanding,
    'c_reserved', b.c_reserved, 'c_committed', b.c_committed, 'c_released', b.c_released,
    'c_reclaimed', b.c_reclaimed, 'c_late', b.c_late, 'n_refused', b.n_refused,
    'pacing', rec.pacing, 'pacing_allowed', allowed, 'elapsed_ppm', ppm,
    'day_start', T.period_start(now, 'day', tz), 'day_end', T.period_end(now, 'day', tz),
    'servable', reason == '' and 1 or 0, 'reason', reason, 'now', now}
end


redis.register_function{function_name='ac_budget_reserve', callback=budget_reserve, flags={}, description='Reserve an amount for a bid; refused (a reply) when budget, daily budget, pacing or the campaign\'s state forbid it. A retry with the same id and amount is answered again.'}
redis.register_function{function_name='ac_budget_commit', callback=budget_commit, flags={}, description='Charge the clearing price against a reservation (amount <= reserved; the rest is released). Idempotent per reservation id. A reservation that expired is charged late if the budget still allows it (the impression was served), else refused.'}
redis.register_function{function_name='ac_budget_release', callback=budget_release, flags={}, description='Release a reservation (the bid lost). Idempotent; never fails on the reservation\'s state.'}
redis.register_function{function_name='ac_budget_state', callback=budget_state, flags={}, description='Budget, spend, reservations, counters, pacing and servability of a campaign (reclaims expired reservations first).'}
end

-- ==== domain: cache (lua/cache.lua.j2) ====
do
local C = {}
C.MAX_TTL_MS = 30 * T.DAY
C.MAX_LOCK_MS = 10 * T.MINUTE
C.MAX_PAYLOAD = 4 * 1024 * 1024
C.MAX_TAGS = 32
C.MAX_ACK = 1000
C.MAX_BATCH = 500
C.PAIR = {'cache_value', 'cache_lock'}
C.TRIPLE = {'cache_value', 'cache_lock', 'cache_writer'}
C.WB = {'cache_value', 'cache_lock', 'cache_stream'}
C.BOOL = {['0'] = true, ['1'] = true}
C.KINDS = {value = true, negative = true}
C.OPS = {set = true, del = true}

C.pairs = B.new(K.MAX_SEEN, 'lock')
function C.same_key(keys, n)
  local hit = C.pairs.t.lock[keys[1]]
  if hit and (n or 2) == 2 and hit[1] == keys[2] then return hit[2] end
  local _, _, vs = K.split(keys[1])
  local k = string.sub(vs, 3)
  for i = 2, n or 2 do
    local _, _, s = K.split(keys[i])
    if string.sub(s, 3) ~= k then
      E.fail('ADCACHE_BADKEY', 'KEYS[' .. i .. '] must belong to ' .. k .. ', got ' .. keys[i])
    end
  end
  B.put(C.pairs, 'lock', keys[1], {keys[2], k})
  return k
end

function C.dirty(vkey)
  return K.read('HEXISTS', vkey, 'w') == 1
end

function C.token(key)
  return K.read('GET', key)
end

function C.check_types(keys, first_tag, stream)
  K.expect_type(keys[1], 'hash')
  K.expect_type(keys[2], 'string')
  if stream then K.expect_type(stream, 'stream') end
  for i = first_tag, #keys do K.expect_type(keys[i], 'set') end
end

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

function C.lock(key, token, ms)
  return redis.call('SET', key, token, 'NX', 'PX', ms) or C.token(key) == token
end

function C.read(vkey)
  return K.read('HMGET', vkey, 'p', 'x', 'd', 'n', 'w')
end

function C.lookup(v, lkey, token, lock_ms, refresh, now)
  if v[2] then
    local remaining = tonumber(v[2]) - now
    local delta = tonumber(v[3]) or 0
    if v[5] then
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

local function cache_get(keys, args)
  K.check(keys, C.PAIR)
  C.same_key(keys)
  if #args ~= 3 then V.nargs(args, 3, 3) end
  local token = V.id(args[1], 'token')
  local lock_ms = V.pos(args[2], 'lock_ttl_ms', C.MAX_LOCK_MS)
  local refresh = V.enum(args[3], 'refresh', C.BOOL) == '1'
  local v = C.read(keys[1])
  return C.lookup(v, keys[2], token, lock_ms, refresh, T.now_ms())
end

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
  local vals = {}
  for i = 1, n do
    vals[i] = C.read(keys[i])
    K.expect_type(keys[n + i], 'string')
  end
  local now = T.now_ms()
  local out = {}
  for i = 1, n do
    local r = C.lookup(vals[i], keys[n + i], token, lock_ms, false, now)
    for j = 1, 4 do out[#out + 1] = r[j] end
  end
  return out
end

local function cache_fill(keys, args)
  K.check(keys, {'cache_value', 'cache_lock'}, 'cache_tag', C.MAX_TAGS)
  local member = C.same_key(keys)
  V.nargs(args, 6, 6)
  local token = V.id(args[1], 'token')
  local negative = V.enum(args[2], 'kind', C.KINDS) == 'negative'
  local payload = V.str(args[3], 'payload', C.MAX_PAYLOAD)
  local ttl = V.pos(args[4], 'ttl_ms', C.MAX_TTL_MS)
  local grace = V.uint(args[5], 'grace_ms', C.MAX_TTL_MS)
  local delta = V.uint(args[6], 'load_ms', C.MAX_LOCK_MS)
  C.check_types(keys, 3)
  if C.token(keys[2]) ~= token then return 0 end
  C.store(keys, member, 3, payload, negative, ttl, grace, delta, T.now_ms())
  return 1
end

local function cache_release(keys, args)
  K.check(keys, C.PAIR)
  C.same_key(keys)
  V.nargs(args, 1, 1)
  local token = V.id(args[1], 'token')
  if C.token(keys[2]) ~= token then return 0 end
  return redis.call('DEL', keys[2])
end

local function cache_write_begin(keys, args)
  K.check(keys, {'cache_value', 'cache_lock', 'cache_writer'})
  C.same_key(keys, 3)
  V.nargs(args, 2, 2)
  local token = V.id(args[1], 'token')
  local ttl = V.pos(args[2], 'ttl_ms', C.MAX_LOCK_MS)
  K.expect_type(keys[2], 'string')
  K.expect_type(keys[3], 'string')
  redis.call('DEL', keys[2])
  redis.call('SET', keys[3], token, 'PX', ttl)
  return 1
end

local function cache_set(keys, args)
  K.check(keys, {'cache_value', 'cache_lock', 'cache_writer'}, 'cache_tag', C.MAX_TAGS)
  local member = C.same_key(keys, 3)
  V.nargs(args, 5, 5)
  local token = V.id(args[1], 'token')
  local negative = V.enum(args[2], 'kind', C.KINDS) == 'negative'
  local payload = V.str(args[3], 'payload', C.MAX_PAYLOAD)
  local ttl = V.pos(args[4], 'ttl_ms', C.MAX_TTL_MS)
  local grace = V.uint(args[5], 'grace_ms', C.MAX_TTL_MS)
  C.check_types(keys, 4)
  if C.token(keys[3]) ~= token then
    redis.call('DEL', keys[1], keys[2], keys[3])
    return 0
  end
  redis.call('DEL', keys[3])
  C.store({keys[1], keys[2], unpack(keys, 4)}, member, 3, payload, negative, ttl, grace, 0,
    T.now_ms())
  return 1
end

local function cache_invalidate(keys, args)
  K.check(keys, C.PAIR)
  C.same_key(keys)
  V.nargs(args, 0, 0)
  local dirty = C.dirty(keys[1])
  K.expect_type(keys[2], 'string')
  local n = 0
  if not dirty then n = redis.call('DEL', keys[1]) end
  redis.call('DEL', keys[2])
  return n
end

local function cache_invalidate_tag(keys, args)
  local tag = K.check(keys, {'cache_tag'})
  V.nargs(args, 0, 0)
  local members = K.read('SMEMBERS', keys[1])
  local dirty = {}
  for i, m in ipairs(members) do
    dirty[i] = C.dirty(K.cache_value(tag, m))
    K.expect_type(K.cache_lock(tag, m), 'string')
  end
  local n = 0
  for i, m in ipairs(members) do
    if not dirty[i] then
      n = n + redis.call('DEL', K.cache_value(tag, m))
      redis.call('SREM', keys[1], m)  -- a dirty member keeps its tag
    end
    redis.call('DEL', K.cache_lock(tag, m))
  end
  return n
end

local function cache_wb_write(keys, args)
  K.check(keys, {'cache_value', 'cache_lock', 'cache_stream'}, 'cache_tag', C.MAX_TAGS)
  local member = C.same_key(keys)
  V.nargs(args, 4, 4)
  local op = V.enum(args[1], 'op', C.OPS)
  local payload = V.str(args[2], 'payload', C.MAX_PAYLOAD)
  local ttl = V.pos(args[3], 'ttl_ms', C.MAX_TTL_MS)
  local grace = V.uint(args[4], 'grace_ms', C.MAX_TTL_MS)
  if op == 'del' then payload, grace = '', 0 end
  C.check_types(keys, 4, keys[3])
  local now = T.now_ms()
  local id = redis.call('XADD', keys[3], '*', 'k', member, 'op', op, 'p', payload)
  C.store({keys[1], keys[2], unpack(keys, 4)}, member, 3, payload, op == 'del', ttl, grace, 0, now)
  redis.call('HSET', keys[1], 'w', id, 'e', now + ttl + grace)
  redis.call('PERSIST', keys[1])
  return id
end

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
  K.expect_type(keys[1], 'stream')
  for i = 2, #keys do K.expect_type(keys[i], 'hash') end
  if redis.call('EXISTS', keys[1]) == 0 then return 0 end
  local known = false
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', keys[1])) do
    for i = 1, #g, 2 do
      if g[i] == 'name' and g[i + 1] == group then known = true end
    end
  end
  if not known then E.fail('ADCACHE_NOTFOUND', 'no consumer group ' .. group .. ' on ' .. keys[1]) end
  local now = T.now_ms()
  for i = 2, #keys do
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

-- ==== domain: campaign (lua/campaign.lua.j2) ====
do
local MAX_SHARDS = 64
local MAX_TZ = 14 * 3600
local STATUS = {active = true, paused = true}
local PACING = {off = true, even = true}
local DEFAULTS = {daily = '0', tz = '0', pacing = 'off', tol_bp = '1000', floor = '0',
  fcap = '[]', creatives = '[]'}
local REQUIRED = {'advertiser', 'status', 'bid', 'budget', 'start', 'end', 'shards'}
local PAIR = {'campaign', 'budget'}
local ALL = {'campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled',
  'budget_settled_exp'}
local ALL_TYPES = {'hash', 'hash', 'zset', 'hash', 'zset'}

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
  tz = function(v) T.zone(v, 'tz', MAX_TZ); return v end,
  pacing = function(v) return V.enum(v, 'pacing', PACING) end,
  tol_bp = function(v) V.int(v, 'tol_bp', 0, 100000); return v end,
  floor = function(v) M.amount(v, 'floor'); return v end,
  shards = check_shards,
  fcap = function(v) return V.str(v, 'fcap', 16384) end,
  creatives = function(v) return V.str(v, 'creatives', 65536) end,
}

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

local function campaign_set(keys, args)
  K.check(keys, PAIR)
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
  K.expect_type(keys[2], 'hash')
  check_version(old, expected, keys[1])
  return write(keys, rec, old, T.now_ms())
end

local function campaign_patch(keys, args)
  K.check(keys, PAIR)
  V.nargs(args, 3)
  local expected = V.int(args[1], 'expected_version', -1)
  local changes = read_fields(args, {})
  local old = CS.require(keys[1])
  K.expect_type(keys[2], 'hash')
  check_version(old, expected, keys[1])
  local rec = {}
  for k, v in pairs(old) do rec[k] = v end
  for k, v in pairs(changes) do rec[k] = v end
  check_record(rec)
  return write(keys, rec, old, T.now_ms())
end

local function campaign_get(keys, args)
  K.check(keys, PAIR)
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

local function campaign_remove(keys, args)
  K.check(keys, ALL)
  V.nargs(args, 1, 1)
  local expected = V.int(args[1], 'expected_version', -1)
  local old = CS.load(keys[1])
  for i = 2, 6 do K.expect_type(keys[i], ALL_TYPES[i - 1]) end
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

-- ==== domain: freqcap (lua/freqcap.lua.j2) ====
do
local FC = {}
FC.MAX_CANDIDATES = 500
FC.MAX_RULES = 32
FC.MAX_LIMIT = 1000000000
FC.MAX_ROLLING_LIMIT = 1000
FC.MAX_SECONDS = 366 * 86400
FC.MAX_OFFSET = 86399
FC.LIFETIME_MS = 400 * T.DAY
FC.MAX_DEDUPE_MS = 7 * T.DAY
FC.CHUNK = 1000
FC.UNIT_LETTER = {minute = 'm', hour = 'h', day = 'd', week = 'w', month = 'M'}
FC.LETTER_UNIT = {m = 'minute', h = 'hour', d = 'day', w = 'week', M = 'month'}
FC.SCOPES = {a = 'advertiser', c = 'campaign', k = 'creative'}
FC.PAIR = {'freqcap', 'freqcap_imps'}

function FC.fmt(n) return string.format('%d', n) end

FC.MAX_MEMO = 4096
FC.memo = B.new(FC.MAX_MEMO, 'win', 'lim', 'cand')
FC.NRULES = {['0'] = 0, ['1'] = 1, ['2'] = 2, ['3'] = 3, ['4'] = 4, ['5'] = 5, ['6'] = 6, ['7'] = 7, ['8'] = 8, ['9'] = 9, ['10'] = 10, ['11'] = 11, ['12'] = 12, ['13'] = 13, ['14'] = 14, ['15'] = 15, ['16'] = 16, ['17'] = 17, ['18'] = 18, ['19'] = 19, ['20'] = 20, ['21'] = 21, ['22'] = 22, ['23'] = 23, ['24'] = 24, ['25'] = 25, ['26'] = 26, ['27'] = 27, ['28'] = 28, ['29'] = 29, ['30'] = 30, ['31'] = 31, ['32'] = 32}

function FC.window(tok, what)
  local w = FC.memo.t.win[tok]
  if w then return w end
  if type(tok) ~= 'string' then E.fail('ADCACHE_BADARG', what() .. ' window is missing') end
  w = {}
  local unit, off = string.match(tok, '^(%l+)@(.+)$')
  if not unit then unit = tok end
  local kind, n = string.match(tok, '^(%l+):(%d+)$')
  if FC.UNIT_LETTER[unit] then
    w.kind, w.unit, w.letter = 'fixed', unit, FC.UNIT_LETTER[unit]
    w.off = off and T.zone(off, what() .. ' window offset', FC.MAX_OFFSET) or 0
  elseif kind == 'rolling' or kind == 'recency' then
    w.kind, w.recency = 'rolling', kind == 'recency'
    w.n = V.pos(n, what() .. ' window seconds', FC.MAX_SECONDS)
    w.suffix = '|r' .. FC.fmt(w.n)
  elseif tok == 'lifetime' then
    w.kind, w.suffix = 'lifetime', '|L'
  else
    E.fail('ADCACHE_BADARG', what() .. ' has an unknown window ' .. tok .. ' (expected minute,'
      .. ' hour, day, week, month[@offset_s|@zone], rolling:<s>, recency:<s> or lifetime)')
  end
  return B.put(FC.memo, 'win', tok, w)
end

function FC.period(w, now)
  local p = w.p
  if p and now >= p[1] and now < p[2] then return p end
  local ends = T.period_end(now, w.unit, w.off)
  p = {T.period_start(now, w.unit, w.off), ends, '|' .. w.letter .. FC.fmt(ends / 1000)}
  w.p = p
  return p
end

function FC.bind(rule, now)
  local w = rule.w
  if w.kind ~= 'fixed' then return end
  local p = w.p
  if not p or now < p[1] or now >= p[2] then p = FC.period(w, now) end
  if rule.fp ~= p then rule.fp, rule.ends, rule.field = p, p[2], rule.pre .. p[3] end
end

function FC.what(c, r)
  return 'candidate ' .. c .. (r and (' rule ' .. r) or '')
end

function FC.id(v, c, name, optional)
  if type(v) == 'string' and #v <= K.MAX_ID and (optional or v ~= '')
    and not string.find(v, '[{}]') then
    return v
  end
  return V.id(v, FC.what(c) .. ' ' .. name)
end

function FC.uint(tok, c, r, name)
  local n = FC.memo.t.lim[tok]
  if n then return n end
  n = V.uint(tok, FC.what(c, r) .. ' ' .. name, FC.MAX_LIMIT)
  return B.put(FC.memo, 'lim', tok, n)
end

function FC.candidate(args, i, c)
  local nargs = #args
  if nargs < i + 3 then E.fail('ADCACHE_ARITY', 'the arguments end inside ' .. FC.what(c)) end
  local campaign = FC.id(args[i], c, 'campaign_id', false)
  local adv = FC.id(args[i + 1], c, 'advertiser_id', true)
  local crv = FC.id(args[i + 2], c, 'creative_id', true)
  local n = FC.uint(args[i + 3], c, nil, 'rule count')
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
    local w = FC.window(tok, function() return FC.what(c, r) end)
    local limit = FC.uint(args[i + 2], c, r, 'limit')
    if w.kind == 'rolling' and (limit > FC.MAX_ROLLING_LIMIT or (w.recency and limit ~= 1)) then
      E.fail('ADCACHE_BADARG', FC.what(c, r) .. (w.recency
        and ' is a recency rule: its limit must be 1'
        or (' limit must be at most ' .. FC.MAX_ROLLING_LIMIT .. ' for a rolling window (it keeps'
          .. ' one time per impression), got ' .. limit)))
    end
    local pre = scope .. ':' .. id
    rules[r] = {scope = scope, token = tok, kind = w.kind, n = w.n, limit = limit, w = w, pre = pre,
      field = w.suffix and (pre .. w.suffix), label = FC.SCOPES[scope] .. ' ' .. tok}
    i = i + 3
  end
  local fixed = false
  for _, rule in ipairs(rules) do
    if rule.kind == 'fixed' then fixed = true end
  end
  return {campaign = campaign, rules = rules, n = n, fixed = fixed, vs = 1, ve = 0}, i
end

function FC.get(args, i, c, now)
  local n = FC.NRULES[args[i + 3]]
  local cand, j
  if n then
    j = i + 4 + 3 * n
    if j - 1 <= #args then
      local key = table.concat(args, '{', i, j - 1)
      cand = FC.memo.t.cand[key]
      if not cand or cand.n ~= n then
        cand, j = FC.candidate(args, i, c)
        B.put(FC.memo, 'cand', key, cand)
      end
    end
  end
  if not cand then cand, j = FC.candidate(args, i, c) end
  if cand.fixed and (now < cand.vs or now >= cand.ve) then
    local vs, ve = nil, nil
    for _, rule in ipairs(cand.rules) do
      FC.bind(rule, now)
      local p = rule.fp
      if p then
        if not vs or p[1] > vs then vs = p[1] end
        if not ve or p[2] < ve then ve = p[2] end
      end
    end
    cand.vs, cand.ve = vs, ve
  end
  return cand, j
end

function FC.label(rule)
  return rule.label
end

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

function FC.fetch(key, fields)
  local vals = {}
  if #fields <= FC.CHUNK then
    if #fields == 0 then return vals end
    local got = K.read('HMGET', key, unpack(fields))
    for j = 1, #fields do
      if got[j] then vals[fields[j]] = got[j] end
    end
    return vals
  end
  for s = 1, #fields, FC.CHUNK do
    local part = {}
    for j = s, math.min(#fields, s + FC.CHUNK - 1) do part[#part + 1] = fields[j] end
    local got = K.read('HMGET', key, unpack(part))
    for j = 1, #part do
      if got[j] then vals[part[j]] = got[j] end
    end
  end
  return vals
end

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
    return 0, ts[#ts - rule.limit + 1] + rule.n * 1000
  end
  local c = FC.count_of(v)
  if c < rule.limit then return rule.limit - c, 0 end
  if rule.kind == 'lifetime' or rule.limit == 0 then return 0, -1 end
  return 0, rule.ends
end

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

function FC.extend(key, at)
  local cur = redis.call('PEXPIRETIME', key)
  if cur == -1 or (cur >= 0 and cur < at) then redis.call('PEXPIREAT', key, at) end
end

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

function FC.outcome_reply(s, duplicate)
  local ok, rem, idx, frees, label = string.match(s, '^(%-?%d+)|(%-?%d+)|(%d+)|(%-?%d+)|(.*)$')
  if not ok then E.fail('ADCACHE_WRONGTYPE', 'a recorded impression holds ' .. s) end
  return {tonumber(ok), tonumber(rem), tonumber(idx), label, tonumber(frees), duplicate}
end

local function freqcap_check(keys, args)
  K.check1(keys, 'freqcap')
  if #args < 1 then V.nargs(args, 1) end
  local n = V.uint(args[1], 'n_candidates')
  if n > FC.MAX_CANDIDATES then
    E.fail('ADCACHE_LIMIT', 'at most ' .. FC.MAX_CANDIDATES .. ' candidates per check, got ' .. n)
  end
  local now = T.now_ms()
  local cands, i = {}, 2
  for c = 1, n do
    cands[c], i = FC.get(args, i, c, now)
  end
  if i ~= #args + 1 then
    E.fail('ADCACHE_ARITY', n .. ' candidates take ' .. (i - 1) .. ' arguments, got ' .. #args)
  end
  local vals = FC.fetch(keys[1], FC.fields(cands))
  local out, k = {}, 0
  for c = 1, n do
    local cand = cands[c]
    local ok, rem, idx, frees = FC.decide(cand, vals, now)
    out[k + 1], out[k + 2], out[k + 3], out[k + 5] = ok, rem, idx, frees
    out[k + 4] = idx > 0 and cand.rules[idx].label or ''
    k = k + 5
  end
  return out
end

local function freqcap_record(keys, args)
  K.check(keys, FC.PAIR)
  if #args < 6 then V.nargs(args, 6) end
  local imp = V.id(args[1], 'impression_id')
  local dedupe = V.pos(args[2], 'dedupe_ttl_ms', FC.MAX_DEDUPE_MS)
  local now = T.now_ms()
  local cand, i = FC.get(args, 3, 1, now)
  if i ~= #args + 1 then
    E.fail('ADCACHE_ARITY', 'the candidate takes ' .. (i - 3) .. ' arguments after dedupe_ttl_ms, got '
      .. (#args - 2))
  end
  local seen = K.read('HMGET', keys[2], imp, '~n')
  if seen[1] then
    local outcome = string.match(seen[1], '^%d+|(.*)$')
    return FC.outcome_reply(outcome or seen[1], 1)
  end
  local fields = FC.fields({cand})
  fields[#fields + 1] = '~s'
  local vals = FC.fetch(keys[1], fields)
  local ok, rem, idx, frees = FC.decide(cand, vals, now)
  if ok ~= 1 then C.incr('caps_blocked') end
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
  local label = idx > 0 and cand.rules[idx].label or ''
  local outcome = ok .. '|' .. rem .. '|' .. idx .. '|' .. FC.fmt(frees) .. '|' .. label
  local forget = now + dedupe
  local ndue = FC.sweep(keys[2], '~n', tonumber(seen[2]), now, FC.imp_stale)
  if not ndue or forget < ndue then ndue = forget end
  redis.call('HSET', keys[2], imp, FC.fmt(forget) .. '|' .. outcome, '~n', FC.fmt(ndue))
  if redis.call('PEXPIREAT', keys[2], forget, 'GT') == 0 then
    redis.call('PEXPIREAT', keys[2], forget, 'NX')
  end
  return {ok, rem, idx, label, frees, 0}
end

function FC.split(field)
  return string.match(field, '^(.*)|([^|]+)$')
end

local function freqcap_reset(keys, args)
  K.check(keys, FC.PAIR)
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
  local names = K.read('HKEYS', keys[1])
  if ent == nil then K.expect_type(keys[2], 'hash') end
  for _, f in ipairs(names) do
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

local function freqcap_inspect(keys, args)
  K.check1(keys, 'freqcap')
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
  local flat = K.read('HGETALL', keys[1])
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

-- ==== domain: monitor (lua/monitor.lua.j2) ====
do
local function monitor_counters(keys, args)
  if #keys ~= 0 then E.fail('ADCACHE_ARITY', 'expected no keys, got ' .. #keys) end
  V.nargs(args, 0, 0)
  return C.flat()
end


redis.register_function{function_name='ac_monitor_counters', callback=monitor_counters, flags={'no-writes'}, description='This node\'s adcache counters since the library was loaded here.'}
end

-- ==== domain: profile (lua/profile.lua.j2) ====
do
local DEFAULT_IDLE_MS = 30 * T.DAY
local MAX_IDLE_MS = 400 * T.DAY
local MAX_FIELDS = 128
local MAX_VALUE = 1024
local MAX_NAME = 64
local MAX_INTERESTS = 64
local MAX_TOKEN = 64
local MAX_DELTA = 1000000000000

local P = {}
local MISSING = {create = true, fail = true}
local PROFILE = 'profile'

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

function P.version(key)
  local v = K.read('HGET', key, 'v')
  if v then return tonumber(v) end
  if redis.call('EXISTS', key) == 1 then
    E.fail('ADCACHE_WRONGTYPE', key .. ' is not a profile record')
  end
  return 0
end

function P.expect(arg, current)
  if arg == '-' then return end
  local want = V.uint(arg, 'expected_version')
  if want ~= current then
    E.fail('ADCACHE_CONFLICT', 'profile version is ' .. current .. ', expected ' .. want)
  end
end

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

local function profile_get(keys, args)
  K.check1(keys, PROFILE)
  if #args ~= 0 then V.nargs(args, 0, 0) end
  local flat = K.read('HGETALL', keys[1])
  if #flat == 0 then return false end
  flat[#flat + 1] = 'pttl'
  flat[#flat + 1] = redis.call('PTTL', keys[1])
  return flat
end

function P.put(keys, args, replace)
  K.check1(keys, PROFILE)
  V.nargs(args, 2)
  local fields = P.fields(args, 3)
  local current = P.version(keys[1])
  local idle = P.idle(args[1], keys[1])
  P.expect(args[2], current)
  return P.write(keys[1], current + 1, T.now_ms(), idle, fields, replace)
end

local function profile_set(keys, args)
  return P.put(keys, args, true)
end

local function profile_patch(keys, args)
  return P.put(keys, args, false)
end

local function profile_activity(keys, args)
  K.check1(keys, PROFILE)
  if #args ~= 3 then V.nargs(args, 3, 3) end
  local delta = V.int(args[1], 'score_delta', -MAX_DELTA, MAX_DELTA)
  local want_idle = V.uint(args[2], 'idle_ttl_ms', MAX_IDLE_MS)
  local missing = V.enum(args[3], 'missing', MISSING)
  local v = K.read('HMGET', keys[1], 'v', 'idle', 'score')
  local current = tonumber(v[1]) or 0
  if current == 0 and redis.call('EXISTS', keys[1]) == 1 then
    E.fail('ADCACHE_WRONGTYPE', keys[1] .. ' is not a profile record')
  end
  if current == 0 and missing == 'fail' then
    E.fail('ADCACHE_NOTFOUND', 'profile ' .. keys[1] .. ' is unknown or expired')
  end
  local idle = want_idle > 0 and want_idle or tonumber(v[2]) or DEFAULT_IDLE_MS
  local score = (tonumber(v[3]) or 0) + delta
  if score > V.MAX_INT or score < -V.MAX_INT then
    E.fail('ADCACHE_BADARG', 'score would leave the range +-' .. string.format('%d', V.MAX_INT))
  end
  local now = T.now_ms()
  local created = 0
  if current == 0 then
    created, current = 1, 1
    redis.call('HSET', keys[1], 'v', 1, 'created', now, 'updated', now, 'score', score, 'last', now,
      'idle', idle)
  else
    redis.call('HSET', keys[1], 'score', score, 'last', now, 'idle', idle)
  end
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
local MAX_TTL_MS = 400 * T.DAY
local DEFAULT_MAX_SEGMENTS = 256
local HARD_MAX_SEGMENTS = 4096
local HARD_MAX_MEMBERS = 10000000
local PRUNE_BATCH = 100
local MAX_PAGE = 1000

local S = {}
local SIDE = {'segment_members', 'segment_expiry'}
local USER_SEGMENTS = 'user_segments'

function S.expire_at_max(key)
  local top = redis.call('ZRANGE', key, 0, 0, 'REV', 'WITHSCORES')
  if #top == 0 then return end
  redis.call('PEXPIREAT', key, tonumber(top[2]))
end

function S.prune_segment(members, expiry, now, limit)
  local gone = redis.call('ZRANGE', expiry, '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
  if #gone > 0 then
    redis.call('ZREM', expiry, unpack(gone))
    redis.call('ZREM', members, unpack(gone))
  end
  return #gone
end

function S.sync_ttl(members, expiry)
  S.expire_at_max(expiry)
  local pt = redis.call('PEXPIRETIME', expiry)
  if pt > 0 then redis.call('PEXPIREAT', members, pt) end
end

local function segment_add(keys, args)
  K.check(keys, SIDE)
  V.nargs(args, 3, 3)
  local user = V.id(args[1], 'user_id')
  local ttl = V.pos(args[2], 'ttl_ms', MAX_TTL_MS)
  local max = V.pos(args[3], 'max_members', HARD_MAX_MEMBERS)
  local now = T.now_ms()
  local old = tonumber(K.read('ZSCORE', keys[2], user))
  K.read('ZSCORE', keys[1], user) -- the members key is written below: check its type first
  local is_new = not old or old <= now
  if is_new then
    local live = redis.call('ZCOUNT', keys[2], '(' .. now, '+inf')
    if live >= max then
      E.fail('ADCACHE_LIMIT', 'segment has ' .. live .. ' members, the limit is ' .. max)
    end
  end
  S.prune_segment(keys[1], keys[2], now, PRUNE_BATCH)
  local expires = now + ttl
  if is_new then
    redis.call('ZADD', keys[1], now, user)
  else
    redis.call('ZADD', keys[1], 'NX', now, user)
  end
  redis.call('ZADD', keys[2], expires, user)
  S.sync_ttl(keys[1], keys[2])
  return {expires, is_new and 1 or 0, redis.call('ZCARD', keys[2])}
end

local function segment_remove(keys, args)
  K.check(keys, SIDE)
  V.nargs(args, 1, 1)
  local user = V.id(args[1], 'user_id')
  local now = T.now_ms()
  local exp = tonumber(K.read('ZSCORE', keys[2], user))
  K.read('ZREM', keys[1], user)
  redis.call('ZREM', keys[2], user)
  S.prune_segment(keys[1], keys[2], now, PRUNE_BATCH)
  S.sync_ttl(keys[1], keys[2])
  return (exp and exp > now) and 1 or 0
end

local function segment_members(keys, args)
  K.check(keys, SIDE)
  V.nargs(args, 2, 2)
  local cursor = V.str(args[1], 'cursor', 160)
  local count = V.pos(args[2], 'count', MAX_PAGE)
  local rank = 0
  if cursor ~= '' then
    local s, u = string.match(cursor, '^(%d+):(.+)$')
    if not s then E.fail('ADCACHE_BADARG', 'cursor is malformed: ' .. cursor) end
    rank = K.read('ZCOUNT', keys[1], '(' .. s, '+inf')
    for _, m in ipairs(redis.call('ZRANGE', keys[1], s, s, 'BYSCORE')) do
      if m >= u then rank = rank + 1 end  -- equal scores run in reverse lexical order
    end
  end
  local now = T.now_ms()
  local out = {''}
  local last_user, last_score = nil, nil
  local scanned = 0
  while #out - 1 < count * 3 and scanned < count * 10 do
    local batch = K.read('ZRANGE', keys[1], rank, rank + count - 1, 'REV', 'WITHSCORES')
    if #batch == 0 then break end
    local users = {}
    for i = 1, #batch, 2 do users[#users + 1] = batch[i] end
    local exps = K.read('ZMSCORE', keys[2], unpack(users))
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

local function segment_join(keys, args)
  K.check1(keys, USER_SEGMENTS)
  V.nargs(args, 3, 3)
  local seg = V.id(args[1], 'segment_id')
  local expires = V.pos(args[2], 'expires_at_ms')
  local max = V.pos(args[3], 'max_segments', HARD_MAX_SEGMENTS)
  local now = T.now_ms()
  if expires > now + MAX_TTL_MS then
    E.fail('ADCACHE_BADARG', 'expires_at_ms is more than 400 days ahead')
  end
  if expires <= now then return {-1, K.read('ZCOUNT', keys[1], '(' .. now, '+inf')} end
  local old = tonumber(K.read('ZSCORE', keys[1], seg))
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

local function segment_leave(keys, args)
  K.check1(keys, USER_SEGMENTS)
  V.nargs(args, 1, 1)
  local seg = V.id(args[1], 'segment_id')
  local now = T.now_ms()
  local old = tonumber(K.read('ZSCORE', keys[1], seg))
  redis.call('ZREM', keys[1], seg)
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now)
  S.expire_at_max(keys[1])
  return (old and old > now) and 1 or 0
end

local function segment_of(keys, args)
  K.check1(keys, USER_SEGMENTS)
  if #args ~= 0 then V.nargs(args, 0, 0) end
  return K.read('ZRANGE', keys[1], '(' .. T.now_ms(), '+inf', 'BYSCORE', 'WITHSCORES')
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
local MAX_TTL_MS = 30 * T.DAY
local MAX_ATTRS = 64
local MAX_ATTR_VALUE = 4096
local MAX_HISTORY = 500
local MAX_TOKENS = 16
local MAX_TOKEN = 64
local MAX_REFERRER = 512
local MAX_TOP = 100
local MAX_IMPRESSION_IDS = 1024
local MAX_CAMPAIGNS = 256
local INDEX_SLACK_MS = 5 * T.SECOND
local DEFAULT_MAX_SESSIONS = 256
local HARD_MAX_SESSIONS = 4096
local MAX_REMOVE = 1000

local SS = {}
local KINDS = {view = true, request = true}
local SESSION, HISTORY, USER_SESSIONS = 'session', 'session_history', 'user_sessions'
local BOTH = {'session', 'session_history'}

function SS.live(key)
  local v = K.read('HMGET', key, 'idle', 'deadline')
  if not v[1] then
    if redis.call('EXISTS', key) == 1 then
      E.fail('ADCACHE_WRONGTYPE', key .. ' is not a session record')
    end
    E.fail('ADCACHE_NOTFOUND', 'session ' .. key .. ' is unknown or expired')
  end
  return tonumber(v[1]), tonumber(v[2])
end

function SS.token(v, what)
  local t = V.str(v, what)
  if t == '' or #t > MAX_TOKEN or string.find(t, '[%c,]') then
    E.fail('ADCACHE_BADARG', what .. ' must be 1 to ' .. MAX_TOKEN
      .. ' bytes without commas or control characters, got ' .. t)
  end
  return t
end

function SS.tokens(args, first, last, what)
  if last - first + 1 > MAX_TOKENS then
    E.fail('ADCACHE_LIMIT', 'at most ' .. MAX_TOKENS .. ' ' .. what .. ' per entry')
  end
  if last < first then return '' end
  if last == first then return SS.token(args[first], what) end
  local out, seen = {}, {}
  for i = first, last do
    local t = SS.token(args[i], what)
    if not seen[t] then
      seen[t] = true
      out[#out + 1] = t
    end
  end
  return table.concat(out, ',')
end

function SS.parse_entry(e)
  local ms, kind, cats, kws, ref = string.match(e, '^(%d+)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')
  return tonumber(ms), kind, cats, kws, ref
end

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
  local flat = K.read('HGETALL', key)
  if #flat == 0 then return false end
  flat[#flat + 1] = 'pttl'
  flat[#flat + 1] = redis.call('PTTL', key)
  return flat
end

local function session_create(keys, args)
  K.check(keys, {'session'}, 'session_history', 1)
  V.nargs(args, 3)
  local user = V.id(args[1], 'user_id')
  local idle = V.pos(args[2], 'idle_ttl_ms', MAX_TTL_MS)
  local life = V.pos(args[3], 'max_lifetime_ms', MAX_TTL_MS)
  local attrs = V.pairs(args, 4, 'attribute', MAX_ATTRS, MAX_ATTR_VALUE)
  if keys[2] then K.expect_type(keys[2], 'list') end
  local t = redis.call('TYPE', keys[1])['ok']
  if t == 'hash' then E.fail('ADCACHE_EXISTS', 'session ' .. keys[1] .. ' exists') end
  if t ~= 'none' then K.wrongtype(keys[1], 'a hash') end
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

local function session_get(keys, args)
  K.check1(keys, SESSION)
  if #args ~= 0 then V.nargs(args, 0, 0) end
  return record_reply(keys[1])
end

local function session_touch(keys, args)
  K.check(keys, {'session'}, 'session_history', 1)
  V.nargs(args, 0, 0)
  local idle, deadline = SS.live(keys[1])
  if keys[2] then K.expect_type(keys[2], 'list') end
  local now = T.now_ms()
  local expires = math.min(now + idle, deadline)
  redis.call('HSET', keys[1], 'touched', now)
  redis.call('PEXPIREAT', keys[1], expires)
  if keys[2] then redis.call('PEXPIREAT', keys[2], expires) end
  return {expires, deadline}
end

local function session_delete(keys, args)
  K.check(keys, {'session'}, 'session_history', 1)
  V.nargs(args, 0, 1)
  local user = args[1] and V.id(args[1], 'user_id')
  if keys[2] then K.expect_type(keys[2], 'list') end
  local t = redis.call('TYPE', keys[1])['ok']
  if t ~= 'hash' and t ~= 'none' then K.wrongtype(keys[1], 'a hash') end
  if user and t == 'hash' and redis.call('HGET', keys[1], 'user') ~= user then return 0 end
  local n = redis.call('DEL', keys[1])
  if keys[2] then redis.call('DEL', keys[2]) end
  return n
end

local function session_track(keys, args)
  K.check(keys, BOTH)
  V.nargs(args, 4)
  local kind = V.enum(args[1], 'kind', KINDS)
  local max_history = V.pos(args[2], 'max_history', MAX_HISTORY)
  local ref = V.str(args[3], 'referrer', MAX_REFERRER)
  if string.find(ref, '%c') then E.fail('ADCACHE_BADARG', 'referrer has a control character') end
  local ncat = V.uint(args[4], 'n_categories', #args - 4)
  local cats = SS.tokens(args, 5, 4 + ncat, 'category')
  local kws = SS.tokens(args, 5 + ncat, #args, 'keyword')
  local idle, deadline = SS.live(keys[1])
  local now = T.now_ms()
  local expires = math.min(now + idle, deadline)
  local len = K.read('LPUSH', keys[2], now .. '\t' .. kind .. '\t' .. cats .. '\t' .. kws .. '\t' .. ref)
  if len > max_history then
    redis.call('LTRIM', keys[2], 0, max_history - 1)
    len = max_history
  end
  redis.call('HSET', keys[1], 'touched', now)
  redis.call('PEXPIREAT', keys[1], expires)
  redis.call('PEXPIREAT', keys[2], expires)
  return {expires, deadline, len}
end

local function session_history(keys, args)
  K.check(keys, BOTH)
  V.nargs(args, 1, 1)
  local count = V.pos(args[1], 'count', MAX_HISTORY)
  local entries = K.read('LRANGE', keys[2], 0, count - 1)
  if K.read('HLEN', keys[1]) == 0 then return false end
  local out = {}
  for _, e in ipairs(entries) do
    local ms, kind, cats, kws, ref = SS.parse_entry(e)
    if ms then out[#out + 1] = {ms, kind, cats, kws, ref} end
  end
  return out
end

local function session_context(keys, args)
  K.check(keys, BOTH)
  V.nargs(args, 2, 2)
  local half = V.pos(args[1], 'half_life_ms', MAX_TTL_MS)
  local top = V.pos(args[2], 'top', MAX_TOP)
  local v = K.read('HMGET', keys[1], 'imps', 'idle')
  if not v[2] and redis.call('EXISTS', keys[1]) == 0 then return false end
  local history = K.read('LRANGE', keys[2], 0, MAX_HISTORY - 1)
  local imps = tonumber(v[1]) or 0
  local now = T.now_ms()
  local catw, kww = {}, {}
  local entries, referrer = 0, ''
  for _, e in ipairs(history) do
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

local function session_impression(keys, args)
  K.check1(keys, SESSION)
  V.nargs(args, 3, 4)
  local cap = V.uint(args[1], 'session_cap')
  local campaign = args[2]
  if campaign ~= '' then V.id(campaign, 'campaign_id') end
  local ccap = V.uint(args[3], 'campaign_cap')
  local imp = args[4] and V.id(args[4], 'impression_id') or nil
  SS.live(keys[1])
  local f = 'i.' .. campaign
  local v = redis.call('HMGET', keys[1], 'imps', f, 'ncamp', 'nx', imp and ('x.' .. imp) or 'nx')
  if imp and v[5] then
    local a, r, t, c = string.match(v[5], '^(%d)|(%a[%a_]*)|(%d+)|(%d+)$')
    return {tonumber(a), r, tonumber(t), tonumber(c), 1}
  end
  local total, count, ncamp = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
  local reply
  if cap > 0 and total >= cap then
    reply = {0, 'session_cap', total, count}
  elseif campaign == '' then
    reply = {1, 'ok', redis.call('HINCRBY', keys[1], 'imps', 1), 0}
  elseif ccap > 0 and count >= ccap then
    reply = {0, 'campaign_cap', total, count}
  elseif count == 0 and ncamp >= MAX_CAMPAIGNS then
    reply = {0, 'campaign_limit', total, count}
  else
    if count == 0 then redis.call('HINCRBY', keys[1], 'ncamp', 1) end
    reply = {1, 'ok', redis.call('HINCRBY', keys[1], 'imps', 1), redis.call('HINCRBY', keys[1], f, 1)}
  end
  if imp and (tonumber(v[4]) or 0) < MAX_IMPRESSION_IDS then
    redis.call('HSET', keys[1], 'x.' .. imp, table.concat(reply, '|'))
    redis.call('HINCRBY', keys[1], 'nx', 1)
  end
  reply[5] = 0
  return reply
end

local function session_index_add(keys, args)
  K.check1(keys, USER_SESSIONS)
  V.nargs(args, 3, 3)
  local sid = V.id(args[1], 'session_id')
  local life = V.pos(args[2], 'max_lifetime_ms', MAX_TTL_MS)
  local max = V.pos(args[3], 'max_sessions', HARD_MAX_SESSIONS)
  local now = T.now_ms()
  local old = tonumber(K.read('ZSCORE', keys[1], sid))
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

local function session_index_remove(keys, args)
  K.check1(keys, USER_SESSIONS)
  V.nargs(args, 1)
  if #args > MAX_REMOVE then E.fail('ADCACHE_LIMIT', 'at most ' .. MAX_REMOVE .. ' ids per call') end
  for i = 1, #args do V.id(args[i], 'session_id') end
  return K.read('ZREM', keys[1], unpack(args))
end

local function session_index_list(keys, args)
  K.check1(keys, USER_SESSIONS)
  V.nargs(args, 0, 0)
  return K.read('ZRANGE', keys[1], '(' .. T.now_ms(), '+inf', 'BYSCORE', 'WITHSCORES')
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

-- ==== domain: stats (lua/stats.lua.j2) ====
do
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
local REACH = {['0'] = true, ['1'] = true}

local S = {}

S.MAX_MEMO = 4096
S.memo = B.new(S.MAX_MEMO, 'v')

function S.remember(key, value)
  return B.put(S.memo, 'v', key, value)
end

function S.utc_hour(h)
  local key = 'u' .. h
  return S.memo.t.v[key] or S.remember(key, T.ymdh(h, 0))
end

function S.offset(v)
  return T.zone(v, 'offset_s', MAX_OFFSET_S)
end

function S.bucket(unit, ms, off)
  if unit == 'hour' then return T.period_start(ms, 'hour', off), T.ymdh(ms, off) end
  return T.period_start(ms, 'day', off), T.ymd(ms, off)
end

function S.range(tag, unit, n, now, off)
  local key = tag .. '{' .. unit .. '{' .. n .. '{' .. (type(off) == 'table' and off.key or off)
  local hit = S.memo.t.v[key]
  if hit and now >= hit[1] and now < hit[2] then return hit[3] end
  local step = unit == 'hour' and T.HOUR or T.DAY
  local start = S.bucket(unit, now, off)
  local out = {}
  local zlabels
  if type(off) == 'table' then
    zlabels = {}
    local t = now
    for i = 0, n - 1 do
      local s, _, label = T.zbounds(off, t, unit, true)
      zlabels[i] = label
      t = s - 1
    end
  end
  for i = n - 1, 0, -1 do
    local label = zlabels and zlabels[i]
    if not label then label = select(2, S.bucket(unit, start - i * step, off)) end
    if unit == 'hour' then
      out[#out + 1] = {label, K.stats_hour(tag, label), K.stats_reach_hour(tag, label)}
    else
      out[#out + 1] = {label, K.stats_day(tag, label), K.stats_reach_day(tag, label)}
    end
  end
  S.remember(key, {start, T.period_end(now, unit, off), out})
  return out
end

function S.current(tag, now, off)
  local key = tag .. '{' .. (type(off) == 'table' and off.key or off)
  local hit = S.memo.t.v[key]
  if hit and now >= hit[1] and now < hit[2] then return hit end
  local hour_start, hour = S.bucket('hour', now, off)
  local _, day = S.bucket('day', now, off)
  return S.remember(key, {hour_start, T.period_end(now, 'hour', off), hour, day,
    K.stats_hour(tag, hour),
    K.stats_day(tag, day), K.stats_reach_hour(tag, hour), K.stats_reach_day(tag, day),
    T.period_end(now, 'day', off)})
end

function S.range_args(args, extra)
  V.nargs(args, 3, 3 + (extra or 0))
  local unit = V.enum(args[1], 'unit', UNITS)
  local max = unit == 'hour' and MAX_HOURS or MAX_DAYS
  local n = V.pos(args[2], 'n')
  if n > max then E.fail('ADCACHE_LIMIT', 'at most ' .. max .. ' ' .. unit .. 's per call') end
  return unit, n, S.offset(args[3])
end

function S.stored(v, key)
  if not v then return '0' end
  if not string.match(v, '^%d+$') then
    E.fail('ADCACHE_WRONGTYPE', key .. ' holds a non-integer counter: ' .. v)
  end
  return v
end

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

local function stats_record(keys, args)
  local tag = K.check1(keys, 'stats_meta')
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
  local cur = S.current(tag, now, off)
  local hour_start, hour, day = cur[1], cur[3], cur[4]
  local hkey, dkey, rhkey, rdkey = cur[5], cur[6], cur[7], cur[8]
  local meta = K.read('HMGET', keys[1], 'first_ms', 'events', 'duplicates')
  local events_n, dups_n = tonumber(meta[2] or 0), tonumber(meta[3] or 0)
  if not events_n or not dups_n then
    E.fail('ADCACHE_WRONGTYPE', keys[1] .. ' holds a non-integer counter')
  end

  local ids, seen = {}, {}
  local cur_ev
  if dedup > 0 then
    for _, ev in ipairs(events) do
      if ev.id ~= '' then ids[#ids + 1] = ev.id end
    end
    if #ids > 0 then
      local first = T.period_start(now - dedup, 'hour', 0)
      local last = T.period_start(now, 'hour', 0)
      for h = first, last - T.HOUR, T.HOUR do
        local found = K.read('SMISMEMBER', K.stats_dedup(tag, S.utc_hour(h)), unpack(ids))
        for j = 1, #ids do
          if found[j] == 1 then seen[ids[j]] = true end
        end
      end
      cur_ev = K.stats_dedup(tag, S.utc_hour(last))
    end
  end

  local sums = {0, 0, 0, 0, 0}
  local users = {}
  local recorded, dups, added = 0, 0, 0
  local kept = {}
  for _, ev in ipairs(events) do
    if cur_ev and ev.id ~= '' and seen[ev.id] then
      dups = dups + 1
    else
      kept[#kept + 1] = ev
    end
  end
  local wrote, any_user = false, false
  for _, ev in ipairs(kept) do
    for f = 1, 5 do
      if ev[f] > 0 then wrote = true end
    end
    if ev.user ~= '' then any_user = true end
  end
  if wrote then
    K.expect_type(hkey, 'hash')
    K.expect_type(dkey, 'hash')
  end
  if any_user then
    K.expect_hll(rhkey)
    K.expect_hll(rdkey)
  end
  for _, ev in ipairs(kept) do
    local dup = false
    if cur_ev and ev.id ~= '' then
      local fresh = added == 0 and K.read('SADD', cur_ev, ev.id) or redis.call('SADD', cur_ev, ev.id)
      if fresh == 0 then dup = true else added = added + 1 end
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

  local hour_exp = cur[2] + hour_ttl
  local day_exp = cur[9] + day_ttl
  wrote = false
  for f = 1, 5 do
    if sums[f] > 0 then
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
    redis.call('HSET', keys[1], 'first_ms', meta[1] or now, 'last_ms', now,
      'events', events_n + recorded, 'duplicates', dups_n + dups)
    redis.call('PEXPIREAT', keys[1], day_exp)
  end
  C.incr('stats_events', recorded)
  C.incr('stats_duplicates', dups)
  return {recorded, dups, hour, day}
end

local function stats_summary(keys, args)
  local tag = K.check1(keys, 'stats_meta')
  local unit, n, off = S.range_args(args, 1)
  local want_reach = args[4] == nil or V.enum(args[4], 'reach', REACH) == '1'
  local now = T.now_ms()
  local range = S.range(tag, unit, n, now, off)
  local acc = {}
  for f = 1, 5 do acc[f] = S.sum_new() end
  local reach_keys = {}
  for _, b in ipairs(range) do
    local v = K.read('HMGET', b[2], unpack(FIELDS))
    for f = 1, 5 do S.sum_add(acc[f], S.stored(v[f], b[2])) end
    reach_keys[#reach_keys + 1] = b[3]
  end
  local reach = want_reach and K.read('PFCOUNT', unpack(reach_keys)) or -1
  local last = K.read('HGET', keys[1], 'last_ms')
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

local function stats_series(keys, args)
  local tag = K.check1(keys, 'stats_meta')
  local unit, n, off = S.range_args(args)
  local range = S.range(tag, unit, n, T.now_ms(), off)
  local out = {}
  for _, b in ipairs(range) do
    local v = K.read('HMGET', b[2], unpack(FIELDS))
    out[#out + 1] = b[1]
    for f = 1, 5 do out[#out + 1] = S.stored(v[f], b[2]) end
    out[#out + 1] = K.read('PFCOUNT', b[3])
  end
  return out
end


redis.register_function{function_name='ac_stats_record', callback=stats_record, flags={}, description='Record a batch of events in the campaign\'s current hour and day buckets, once each.'}
redis.register_function{function_name='ac_stats_summary', callback=stats_summary, flags={}, description='Totals and unique reach of the last N hours or days (the current one included).'}
redis.register_function{function_name='ac_stats_series', callback=stats_series, flags={}, description='Per-hour or per-day values of the last N buckets, oldest first, for dashboards.'}
end

-- ==== domain: targeting (lua/targeting.lua.j2) ====
do
local MAX_IDS = 100
local MAX_QUERY = 5000
local NAMES = {'targeting_index', 'targeting_hold'}

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

local function targeting_put(keys, args)
  K.check(keys, NAMES)
  V.nargs(args, 3, 3)
  local id = V.id(args[1], 'campaign_id')
  local ends = V.pos(args[2], 'end_ms')
  local nb = V.uint(args[3], 'not_before_ms')
  K.expect_type(keys[1], 'zset')
  K.expect_type(keys[2], 'zset')
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

local function targeting_remove(keys, args)
  K.check(keys, NAMES)
  V.nargs(args, 1)
  if #args > MAX_IDS then E.fail('ADCACHE_LIMIT', 'at most ' .. MAX_IDS .. ' ids per call') end
  for i = 1, #args do V.id(args[i], 'campaign_id') end
  K.expect_type(keys[2], 'zset')
  local n = K.read('ZREM', keys[1], unpack(args))
  redis.call('ZREM', keys[2], unpack(args))
  prune(keys, T.now_ms())
  return n
end

local function targeting_query(keys, args)
  K.check(keys, NAMES)
  local limit = args[1] and V.pos(args[1], 'limit', MAX_QUERY) or MAX_QUERY
  if #args - 1 > MAX_QUERY then
    E.fail('ADCACHE_LIMIT', 'at most ' .. MAX_QUERY .. ' candidate ids per call')
  end
  local now = T.now_ms()
  if #args > 1 then
    local ids = {unpack(args, 2)}
    local ends = K.read('ZMSCORE', keys[1], unpack(ids))
    local holds = K.read('ZMSCORE', keys[2], unpack(ids))
    local out = {}
    for i, id in ipairs(ids) do
      if ends[i] and tonumber(ends[i]) > now and not (holds[i] and tonumber(holds[i]) > now) then
        out[#out + 1] = id
        if #out >= limit then break end
      end
    end
    return out
  end
  local ids = K.read('ZRANGEBYSCORE', keys[1], '(' .. now, '+inf', 'LIMIT', 0, limit)
  local held = K.read('ZRANGEBYSCORE', keys[2], '(' .. now, '+inf')
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
local LIBRARY_VERSION = '0.6.0'
local LIBRARY_SHA256 = 'dbc28d60293939db94a6a462385299a76ef758c176010285a7ab3cbda47107dd'

local function version(keys, args)
  return {'name', 'adcache', 'version', LIBRARY_VERSION, 'sha256', LIBRARY_SHA256}
end


redis.register_function{function_name='ac_version', callback=version, flags={'no-writes'}, description='The deployed library version and the sha256 of its rendered source.'}
end
