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
  auction = {'a', '^auc$'},
  auction_bids = {'a', '^bids$'},
  freqcap = {'u', '^fc$'},
  freqcap_imps = {'u', '^fcimp$'},
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

-- ==== domain: auction (lua/auction.lua.j2) ====
do
--@domain auction: real-time-bidding auctions, OpenRTB-shaped: floors, deals, private auctions,
-- first and second price, ties to the earliest bid, loss reasons, idempotent bids, close and bill.

-- Two keys per auction, both under the tag {a:<request id>} and both expiring at `expires`:
--   auction (hash): at, inc, created, deadline, exp, expires, seq (arrival counter), state
--     ('open' | 'closed'), closed (ms), imps (msgpack list of imp ids, in request order),
--     ws / bs (msgpack seat sets: auction-level allowed / blocked seats; absent when empty),
--     i.<imp> = msgpack {f = floor, p = private 0|1,
--       d = {<deal id> = {f = floor, a = deal auction type (0: the auction's), w = seat set}}},
--     r.<imp> = msgpack {w = winning bid id, c = clearing price} (written at close),
--     b.<imp> = billing time in ms (written by the first bill).
--   auction_bids (hash): <bid key> = msgpack {id bid id, s seat, i imp, p price, d deal, c cid,
--     r crid, a adomain, n nurl, l lurl, b burl, q arrival seq, st 1 accepted | 0 refused,
--     rs reason}. The bid key is the seat and the bid id (AU.bid_key): OpenRTB bid ids are only
--     unique per bidder, so two seats may both send bid "1".
-- Every bid received is stored, refused ones too, so a repeated (seat, bid id) gets the first
-- reply back.
-- Prices are CPM in integer micros. All sizes are bounded (ADCACHE_LIMIT beyond).
--
-- Lazy close: once the deadline has passed no bid can be accepted, so the outcome is fixed. The
-- write paths (bid, close, bill) record the close when they find an open auction past its deadline;
-- ac_auction_result never writes: it reports state 'due' with the outcome the close will record.
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
-- OpenRTB loss reason codes (0 = no loss: won, or accepted while the auction is open).
AU.WON, AU.EXPIRED, AU.BAD_DEAL = 0, 2, 4
AU.BELOW_FLOOR, AU.BELOW_DEAL_FLOOR, AU.OUTBID, AU.SEAT_BLOCKED = 100, 101, 102, 104

-- Argument cursor for variadic, count-prefixed ARGV layouts.
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

-- `n seat...` as a set {seat = true}; duplicates are harmless.
function AU.seats(r, name)
  local n = AU.count(AU.take(r, name .. ' count'), name, AU.MAX_SEATS)
  local set = {}
  for _ = 1, n do set[V.id(AU.take(r, name), name)] = true end
  return set
end

function AU.is_empty(t) return next(t) == nil end
AU.NONE = {} -- an empty seat set (read only)

-- The bids-hash field of a bid: length-prefixed seat, then the bid id (unambiguous for any ids).
function AU.bid_key(seat, id)
  return #seat .. ':' .. seat .. ':' .. id
end

-- An optional id: '' means absent.
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

-- The whole meta hash as a table: a few fields per imp, small by the bounds above, so one HGETALL
-- is cheaper than several HMGETs.
function AU.load(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then AU.missing(key) end
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

-- Every stored bid, in arrival order.
function AU.load_bids(bids_key)
  local flat = redis.call('HGETALL', bids_key)
  local list = {}
  for i = 1, #flat, 2 do
    local rec = AU.unpack(flat[i + 1], 'bid ' .. flat[i])
    rec.k = flat[i]
    list[#list + 1] = rec
  end
  table.sort(list, function(a, b) return a.q < b.q end)
  return list
end

-- Per-imp configs of the auction, by imp id, and the imp ids in request order.
function AU.config(m)
  local order = AU.unpack(m.imps, 'auction imps')
  local cfg = {}
  for _, imp in ipairs(order) do cfg[imp] = AU.unpack(m['i.' .. imp], 'imp ' .. imp) end
  return order, cfg
end

-- The floor a bid is held to: its deal's floor for a deal bid, else the imp floor.
function AU.floor(c, deal)
  if deal ~= '' and c.d[deal] then return c.d[deal].f end
  return c.f
end

-- The outcome of a closed auction: per imp {w = bid id, c = clearing price}, from the accepted
-- bids. Highest price wins, ties go to the earliest arrival; second price is the higher of the
-- runner-up and the winner's floor (its deal floor for a deal bid), plus the increment, never above
-- the winning bid. A winning deal bid follows its deal's type when the deal sets one (OpenRTB
-- deal.at: 1 first price, 2 second price, 3 fixed price = the deal floor).
-- Deterministic: close and a read of a 'due' auction compute the same.
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

-- Record the close (callers check the state first, so it happens once) and update `m` to match.
function AU.close(key, m, list, now)
  local _, cfg = AU.config(m)
  local res = AU.outcome(tonumber(m.at), tonumber(m.inc), cfg, list)
  local fields = {'state', 'closed', 'closed', now}
  m.state, m.closed = 'closed', tostring(now)
  for imp, r in pairs(res) do
    local packed = cmsgpack.pack(r)
    fields[#fields + 1] = 'r.' .. imp
    fields[#fields + 1] = packed
    m['r.' .. imp] = packed
  end
  redis.call('HSET', key, unpack(fields))
end

-- The result reply (see ac_auction_result), from the loaded meta and bids; no Redis calls.
-- A 'due' auction gets the outcome the close will record.
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

--- @function ac_auction_create
--- @summary Create the auction of one OpenRTB request: imps with floors and deals, type, deadline.
--- @keys auction
--- @argv at tmax_ms exp_ms ttl_ms increment_micros n_wseat [seat]... n_bseat [seat]... n_imps [imp_id floor_micros private(0|1) n_deals [deal_id deal_floor_micros deal_at(0 inherit|1|2|3 fixed) n_wseat [seat]...]...]...
--- @reply field/value array: created, deadline, expires (epoch ms, server clock)
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_EXISTS
local function auction_create(keys, args)
  K.check(keys, {'auction'})
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
  if redis.call('EXISTS', keys[1]) == 1 then
    E.fail('ADCACHE_EXISTS', 'auction ' .. keys[1] .. ' exists')
  end
  local now = T.now_ms()
  local deadline, expires = now + tmax, now + ttl
  local fields = {'state', 'open', 'at', at, 'inc', inc, 'created', now, 'deadline', deadline,
    'exp', exp, 'expires', expires, 'seq', 0, 'imps', cmsgpack.pack(order)}
  -- Seat lists are stored only when given: most auctions have none, and bids skip the decode.
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
  redis.call('HSET', keys[1], unpack(fields))
  redis.call('PEXPIREAT', keys[1], expires)
  return {'created', now, 'deadline', deadline, 'expires', expires}
end

--- @function ac_auction_bid
--- @summary Submit one or more bids atomically; each is accepted or refused with a loss reason.
--- @keys auction auction_bids
--- @argv [seat bid_id imp_id price_micros deal_id cid crid adomain nurl lurl burl]... ('' = absent)
--- @reply array, one entry per bid in order: {bid_id, status accepted|rejected, reason, seq, duplicate 0|1}; a bid repeats another when seat and bid id are the same
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_LIMIT ADCACHE_NOTFOUND ADCACHE_WRONGTYPE
local function auction_bid(keys, args)
  K.check(keys, {'auction', 'auction_bids'})
  local F = AU.BID_FIELDS
  if #args == 0 or #args % F ~= 0 then
    E.fail('ADCACHE_ARITY', 'bids come as groups of ' .. F .. ' arguments, got ' .. #args)
  end
  if #args / F > AU.MAX_BIDS then
    E.fail('ADCACHE_LIMIT', 'at most ' .. AU.MAX_BIDS .. ' bids per call')
  end
  -- 1. parse every bid
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
  -- 2. the auction and the imps the bids name (one HMGET), and the bids already stored
  local fields = {'state', 'deadline', 'ws', 'bs', 'expires', 'seq'}
  local imp_at = {}
  for _, b in ipairs(bids) do
    if not imp_at[b.i] then
      fields[#fields + 1] = 'i.' .. b.i
      imp_at[b.i] = #fields
    end
  end
  local vals = redis.call('HMGET', keys[1], unpack(fields))
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
  local stored = redis.call('HMGET', keys[2], unpack(ids))
  local fresh, seen = 0, {}
  for k, b in ipairs(bids) do
    if not stored[k] and not seen[b.k] then fresh = fresh + 1 end
    seen[b.k] = true
  end
  -- `seq` counts every stored bid, so it bounds the bids hash without an HLEN.
  if seq + fresh > AU.MAX_BIDS then
    E.fail('ADCACHE_LIMIT', 'at most ' .. AU.MAX_BIDS .. ' bids per auction')
  end
  -- 3. decide and record (no error past this point)
  local now = T.now_ms()
  local state = vals[1]
  if state == 'open' and now >= deadline then
    AU.close(keys[1], AU.load(keys[1]), AU.load_bids(keys[2]), now)
    state = 'closed'
  end
  local out, replies, records = {}, {}, {}
  for k, b in ipairs(bids) do
    local prev = replies[b.k]
    if not prev and stored[k] then
      local rec = AU.unpack(stored[k], 'bid ' .. b.id)
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
      replies[key] = {b.id, b.st == 1 and 'accepted' or 'rejected', reason, seq}
      out[k] = {b.id, replies[key][2], reason, seq, 0}
    end
  end
  if #records > 0 then
    redis.call('HSET', keys[2], unpack(records))
    redis.call('PEXPIREAT', keys[2], expires)
    redis.call('HSET', keys[1], 'seq', seq)
  end
  return out
end

--- @function ac_auction_close
--- @summary Close the auction (idempotent): record per imp the winner and the clearing price.
--- @keys auction auction_bids
--- @argv none
--- @reply the result, as for ac_auction_result (state 'closed')
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_NOTFOUND ADCACHE_WRONGTYPE
local function auction_close(keys, args)
  K.check(keys, {'auction', 'auction_bids'})
  V.nargs(args, 0, 0)
  local m = AU.load(keys[1])
  local list = AU.load_bids(keys[2])
  local now = T.now_ms()
  if m.state ~= 'closed' then AU.close(keys[1], m, list, now) end
  return AU.result_reply(m, list, now)
end

--- @function ac_auction_result
--- @flags no-writes
--- @summary Read the auction: state, per imp the winner and clearing price, per bid the outcome.
--- @keys auction auction_bids
--- @argv none
--- @reply nil when unknown, else field/value array: state open|due|closed, at, increment, created, deadline, closed, ended, exp, expires, imps {imp_id, floor, private, winning seat or '', winning bid_id or '', clearing, billed}..., bids {bid_id, imp_id, seat, price, deal_id, cid, crid, adomain, nurl, lurl, burl, seq, status won|lost|rejected|pending, reason, floor}...
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_WRONGTYPE
local function auction_result(keys, args)
  K.check(keys, {'auction', 'auction_bids'})
  V.nargs(args, 0, 0)
  if redis.call('EXISTS', keys[1]) == 0 then return false end
  return AU.result_reply(AU.load(keys[1]), AU.load_bids(keys[2]), T.now_ms())
end

--- @function ac_auction_bill
--- @summary Billing notice (burl) of a winning bid: the first call charges, later ones do not.
--- @keys auction auction_bids
--- @argv seat bid_id
--- @reply array: status billed|already_billed|expired|not_won|unknown_bid|open, clearing price micros (billed, already_billed), imp_id
--- @errors ADCACHE_ARITY ADCACHE_BADKEY ADCACHE_CROSSSLOT ADCACHE_BADARG ADCACHE_NOTFOUND ADCACHE_WRONGTYPE
local function auction_bill(keys, args)
  K.check(keys, {'auction', 'auction_bids'})
  V.nargs(args, 2, 2)
  local seat = V.id(args[1], 'seat')
  local bid_id = V.id(args[2], 'bid id')
  local key = AU.bid_key(seat, bid_id)
  local m = AU.load(keys[1])
  local stored = redis.call('HGET', keys[2], key)
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

redis.register_function{function_name='ac_auction_create', callback=auction_create, flags={}, description='Create the auction of one OpenRTB request: imps with floors and deals, type, deadline.'}
redis.register_function{function_name='ac_auction_bid', callback=auction_bid, flags={}, description='Submit one or more bids atomically; each is accepted or refused with a loss reason.'}
redis.register_function{function_name='ac_auction_close', callback=auction_close, flags={}, description='Close the auction (idempotent): record per imp the winner and the clearing price.'}
redis.register_function{function_name='ac_auction_result', callback=auction_result, flags={'no-writes'}, description='Read the auction: state, per imp the winner and clearing price, per bid the outcome.'}
redis.register_function{function_name='ac_auction_bill', callback=auction_bill, flags={}, description='Billing notice (burl) of a winning bid: the first call charges, later ones do not.'}
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
local LIBRARY_SHA256 = '9d53c0311df1b0b2b623bd50fc4904ba39a9ba6b9c3bf35ffdb3ff602163da4a'

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
