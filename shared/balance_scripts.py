"""The Lua scripts that change a user's Redis view of balances and holds.

Every key one script touches is one of the user's (they carry the hash tag of
the user's shard, `shared.redis_keys`), so each script runs atomically in one
cluster slot:

- `bal` (hash): `units` (settled balance, nano-USD) and `ver` (the Postgres
  version it came from), `held` (sum of holds and pending charges), and for
  API keys with a budget `ko:<key>` (the key's open holds and pending charges)
  and `ks:<key>:<period>` (the key's settled spend in that period);
- `holds` (hash): request id -> units held (a hold, then a pending charge);
- `holdexp` (sorted set): request id -> expiry in epoch ms (pending charges
  have the 30-day expiry of the queue);
- `holdkey` (hash): request id -> `<key>:<period>` for requests of budgeted
  keys, so that whoever releases the request moves the key's counters too.

Integers are passed as strings and changed with HINCRBY, never formatted by
Lua (whose number-to-string conversion loses digits). A request's settled
spend moves into `ks:` exactly when its pending charge is released by the
worker, which happens once: the pending charge exists once.
"""

from __future__ import annotations

# Shared by the scripts that release holds: drop the request's key tag and take
# `amount` off the key's open total; returns the tag (or nil).
UNTAG = """
local function untag(rid, amount)
  local tag = redis.call('HGET', KEYS[4], rid)
  if not tag then return nil end
  redis.call('HDEL', KEYS[4], rid)
  local open = 'ko:' .. string.match(tag, '^[^:]+')
  if amount and amount ~= '0' then
    if redis.call('HINCRBY', KEYS[1], open, '-' .. amount) == 0 then
      redis.call('HDEL', KEYS[1], open)
    end
  end
  return tag
end
"""

# KEYS: bal, holds, holdexp, holdkey, rate window.
# ARGV: request id, units, ttl ms, rpm, tpm, budget units ('' none), key, period.
# Returns {status, room}: 1 placed (room: available after it), 0 over the
# balance (room: available), -1 no balance view, -2 over the key's requests per
# minute, -3 over its tokens per minute, -4 no view of the key's period spend,
# -5 over the key's budget (room: what the budget has left).
HOLD = """
local units = redis.call('HGET', KEYS[1], 'units')
if not units then return {-1, 0} end
local rpm = tonumber(ARGV[4])
local tpm = tonumber(ARGV[5])
if rpm > 0 or tpm > 0 then
  local used = redis.call('HMGET', KEYS[5], 'n', 't')
  if rpm > 0 and tonumber(used[1] or '0') >= rpm then return {-2, 0} end
  if tpm > 0 and tonumber(used[2] or '0') >= tpm then return {-3, 0} end
end
local budgeted = ARGV[6] ~= ''
local open = 'ko:' .. ARGV[7]
if budgeted then
  local spent = redis.call('HGET', KEYS[1], 'ks:' .. ARGV[7] .. ':' .. ARGV[8])
  if not spent then return {-4, 0} end
  local opened = tonumber(redis.call('HGET', KEYS[1], open) or '0')
  local left = tonumber(ARGV[6]) - tonumber(spent) - opened
  if tonumber(ARGV[2]) > left then return {-5, left} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
local available = tonumber(units) - held
if tonumber(ARGV[2]) > available then return {0, available} end
redis.call('HINCRBY', KEYS[1], 'held', ARGV[2])  -- first: a bad number fails before any write
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
if budgeted then
  redis.call('HINCRBY', KEYS[1], open, ARGV[2])
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[7] .. ':' .. ARGV[8])
end
if rpm > 0 or tpm > 0 then
  redis.call('HINCRBY', KEYS[5], 'n', 1)
  redis.call('EXPIRE', KEYS[5], 120)
end
return {1, available - tonumber(ARGV[2])}
"""

# KEYS: bal, holds, holdexp, holdkey. ARGV: key, period, spend units, version.
# Loads a key's settled spend of a period, read from Postgres together with the
# user's balance version, where Redis has none; `kv:` keeps that version, so a
# settlement already in the spend is never added again (PUBLISH_MANY adds only
# batches of a later version: a batch commits whole, so the read saw all of it
# or none). Drops the key's counters of other periods.
# Returns 1 loaded, 0 there was one already, -1 the view is at another version
# (read again, or publish the balance first).
LOAD_KEY_SPEND = """
if redis.call('HGET', KEYS[1], 'ver') ~= ARGV[4] then return -1 end
local tag = ARGV[1] .. ':' .. ARGV[2]
local spent, kept = 'ks:' .. ARGV[1] .. ':', 'kv:' .. ARGV[1] .. ':'
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  local old = string.sub(name, 1, #spent) == spent or string.sub(name, 1, #kept) == kept
  if old and name ~= 'ks:' .. tag and name ~= 'kv:' .. tag then
    redis.call('HDEL', KEYS[1], name)
  end
end
if redis.call('HSETNX', KEYS[1], 'ks:' .. tag, ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'kv:' .. tag, ARGV[4])
return 1
"""

# KEYS: bal, holds, holdexp, holdkey. ARGV: at most this many. Releases holds
# whose expiry has passed (their proxy never reported back) and returns them as
# a flat list: request id, units, request id, units, ...
REAP = (
    UNTAG
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, rid in ipairs(expired) do
  local amount = redis.call('HGET', KEYS[2], rid)
  if amount then
    redis.call('HDEL', KEYS[2], rid)
    if amount ~= '0' then redis.call('HINCRBY', KEYS[1], 'held', '-' .. amount) end
    table.insert(out, rid)
    table.insert(out, amount)
  end
  untag(rid, amount)
  redis.call('ZREM', KEYS[3], rid)
end
return out
"""
)

# KEYS: bal, holds, holdexp, holdkey. ARGV: request id. Returns the released
# units or nil.
RELEASE = (
    UNTAG
    + """
local amount = redis.call('HGET', KEYS[2], ARGV[1])
if amount then
  redis.call('HDEL', KEYS[2], ARGV[1])
  if amount ~= '0' then redis.call('HINCRBY', KEYS[1], 'held', '-' .. amount) end
end
untag(ARGV[1], amount)
redis.call('ZREM', KEYS[3], ARGV[1])
return amount
"""
)

# After a settled batch (worker): release every listed pending charge, move the
# settled spend of budgeted keys into their period counter (where Redis keeps
# one; else it is loaded from Postgres on the key's next request), and publish
# the balance when its version is newer; one call per user.
# KEYS: bal, holds, holdexp, holdkey. ARGV: units, version, request ids...
PUBLISH_MANY = (
    UNTAG
    + """
local ids = {}
for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids > 0 then
  local amounts = redis.call('HMGET', KEYS[2], unpack(ids))
  local present = {}
  for i, rid in ipairs(ids) do
    local units = amounts[i]
    if units then
      present[#present + 1] = rid
      if units ~= '0' then redis.call('HINCRBY', KEYS[1], 'held', '-' .. units) end
      local tag = untag(rid, units)
      if tag and units ~= '0' and redis.call('HEXISTS', KEYS[1], 'ks:' .. tag) == 1 then
        -- a batch the spend's load already saw (its version or older) adds nothing
        if tonumber(ARGV[2]) > tonumber(redis.call('HGET', KEYS[1], 'kv:' .. tag) or '0') then
          redis.call('HINCRBY', KEYS[1], 'ks:' .. tag, units)
        end
      end
    end
  end
  if #present > 0 then redis.call('HDEL', KEYS[2], unpack(present)) end
  redis.call('ZREM', KEYS[3], unpack(ids))
end
local ver = redis.call('HGET', KEYS[1], 'ver')
if ver and tonumber(ver) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'units', ARGV[1], 'ver', ARGV[2])
return 1
"""
)

# KEYS: holdexp. ARGV: ttl ms, request ids... Moves the expiry of holds still
# open (members of holdexp) to now + ttl; a released or settled hold is not a
# member any more and stays gone (XX never adds), and a hold already turned into
# a pending charge keeps its longer expiry (GT never shortens).
EXTEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = now + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', 'GT', at, ARGV[i]) end
return #ARGV - 1
"""

# A request of a free endpoint (no hold) counted against its key's requests per
# minute, in the same window HOLD counts metered requests in.
# KEYS: rate window. ARGV: rpm. Returns 1 counted, 0 over the limit (not counted).
COUNT_REQUEST = """
if tonumber(redis.call('HGET', KEYS[1], 'n') or '0') >= tonumber(ARGV[1]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('EXPIRE', KEYS[1], 120)
return 1
"""
