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
  auction = {'a', '^auc$'},
  auction_bids = {'a', '^bids$'},
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
function K.auction(tag)
  return 'ad:{' .. tag .. '}:auc'
end
function K.auction_bids(tag)
  return 'ad:{' .. tag .. '}:bids'
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
local LIBRARY_SHA256 = '58be536ec3e1d2d6f0f16dd76ce59347abace7e2066d22f2d8bddf8adda02c27'

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
