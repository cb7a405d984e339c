"""Lua scripts that make a consumer's multi-key steps atomic in Redis.

Each script is loaded once per client and called by its SHA (redis-py's `Script`).
"""

from __future__ import annotations

# Take due retries: move their score to the end of a lease and record the owner, so
# that exactly one consumer runs each, and a crashed owner's entry becomes due again.
# KEYS: retry zset, attempts hash, owners hash
# ARGV: now_ms, lease_ms, limit, consumer
# Returns: the score of the first entry left after claiming (-1 if none), then
# id, failed_attempts, id, failed_attempts, ...
CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {-1}
local lease_end = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], lease_end, id)
  redis.call('HSET', KEYS[3], id, ARGV[4])
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or '0'
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

# Renew the leases of scheduled retries this consumer runs, or hand them back (make
# them due at once) when the lease end given is the current time.
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
