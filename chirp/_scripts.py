"""Lua scripts: a worker's multi-key steps, atomic in Redis, and batched appends.

Each script is registered once per client and called by its SHA (redis-py's `Script`).
"""

from __future__ import annotations

# Append a batch of envelopes, each to its stream, keeping a tail where asked: one
# round trip and one command for a whole batch of concurrent publishes.
# KEYS: the stream of each write, then the tail key of each write that keeps one
# ARGV: the envelope field, the number of writes n, the n envelopes, then for each
# write that keeps a tail: its position (1-based) and the tail TTL in ms
# Returns: for each write, its entry id, or the error that refused it
APPEND = """
local n = tonumber(ARGV[2])
local out = {}
for i = 1, n do
  out[i] = redis.pcall('XADD', KEYS[i], '*', ARGV[1], ARGV[2 + i])
end
local tail = n
for t = 3 + n, #ARGV, 2 do
  local i = tonumber(ARGV[t])
  tail = tail + 1
  if type(out[i]) == 'string' then
    local kept = redis.pcall('SET', KEYS[tail], ARGV[2 + i], 'PX', ARGV[t + 1])
    if kept.err then out[i] = kept end
  end
end
return out
"""

# Take due retries: move their score to the end of a lease and record the owner, so
# that exactly one consumer runs each, and a crashed owner's entry becomes due again.
# KEYS: retry zset, attempts hash, owners hash, retry data hash
# ARGV: now_ms, lease_ms, limit, consumer
# Returns: the score of the first entry left after claiming (-1 if none), then
# id, failed_attempts, envelope ('' if its copy is missing), id, ...
CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {-1}
local lease_end = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], lease_end, id)
  redis.call('HSET', KEYS[3], id, ARGV[4])
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or '0'
  out[#out + 1] = redis.call('HGET', KEYS[4], id) or ''
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then out[1] = tonumber(first[2]) end
return out
"""

# Renew the leases of stream entries this consumer still owns (resets their idle time).
# KEYS: stream
# ARGV: group, consumer, id...
# Returns: how many were renewed.
RENEW_PENDING = """
local renewed = 0
for i = 3, #ARGV do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if entry[1] and entry[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
"""

# Renew the leases of scheduled retries this consumer runs; with release = 1, hand
# them back instead (the lease end given is then the current time).
# KEYS: retry zset, owners hash
# ARGV: lease_end_ms, consumer, release (1 or 0), id...
RENEW_SCHEDULED = """
local renewed = 0
for i = 4, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[2] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
    if ARGV[3] == '1' then redis.call('HDEL', KEYS[2], ARGV[i]) end
    renewed = renewed + 1
  end
end
return renewed
"""

# Claim an idempotency key for one run of a handler.
# KEYS: the key's marker
# ARGV: token of this run (consumer and entry id), lease_ms
# Returns: 'claimed' (run it), 'done' (completed before), 'busy' (another runs it).
CLAIM_KEY = """
local marker = redis.call('GET', KEYS[1])
local mine = 'running:' .. ARGV[1]
if not marker or marker == mine then
  redis.call('SET', KEYS[1], mine, 'PX', ARGV[2])
  return 'claimed'
end
if marker == 'done' then return 'done' end
return 'busy'
"""

# Renew (release = 0) or release (release = 1) idempotency keys held by given runs.
# KEYS: the markers
# ARGV: lease_ms, release, then the token of the run holding each marker, in order
RENEW_KEYS = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == 'running:' .. ARGV[i + 2] then
    if ARGV[2] == '1' then
      redis.call('DEL', key)
    else
      redis.call('PEXPIRE', key, ARGV[1])
    end
  end
end
return 0
"""

# Remove a consumer from its group if it holds no pending entry: one that has stopped,
# or crashed long ago (idle past the limit). Pending entries are never dropped.
# KEYS: stream
# ARGV: group, idle_ms (consumers idle longer and holding nothing go), [consumer]
#       with a consumer name, only that one is considered, whatever its idle time.
# Returns: how many consumers were removed.
FORGET_CONSUMERS = """
local removed = 0
for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #row, 2 do info[row[i]] = row[i + 1] end
  local chosen
  if ARGV[3] then
    chosen = info['name'] == ARGV[3]
  else
    chosen = info['idle'] > tonumber(ARGV[2])
  end
  if chosen and info['pending'] == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""

# Trim a stream, keeping at least its newest `retain` entries and every entry that a
# consumer group has not acknowledged: pending ones and those not yet delivered.
# KEYS: stream
# ARGV: retain
# Returns: how many entries were removed.
TRIM = """
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function older(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams < bms or (ams == bms and aseq < bseq)
end
local retain = tonumber(ARGV[1])
if redis.call('XLEN', KEYS[1]) <= retain then return 0 end
local floor
if retain > 0 then
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', retain)
  floor = newest[#newest][1]
else
  floor = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1]
  local ms, seq = parse(floor)
  floor = ms .. '-' .. (seq + 1)
end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local ms, seq = parse(info['last-delivered-id'])
  local unseen = ms .. '-' .. (seq + 1)
  if older(unseen, floor) then floor = unseen end
  if info['pending'] > 0 then
    local oldest = redis.call('XPENDING', KEYS[1], info['name'])[2]
    if older(oldest, floor) then floor = oldest end
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
"""
