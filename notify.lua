-- wsnotify_notify stores a notification in the user's history stream and
-- publishes it on the user's channel, atomically, so the stream id is the
-- envelope id and ids grow monotonically per user.
--
-- KEYS[1] history stream   <prefix>:{<tag>}:history:<user>
-- KEYS[2] user channel     <prefix>:{<tag>}:user:<user>
-- KEYS[3] (optional) idempotency key  <prefix>:{<tag>}:idem:<len(user)>:<user>:<key>
-- ARGV[1] type (1-64 bytes of [A-Za-z0-9._:-])
-- ARGV[2] data: the payload, already valid JSON
-- ARGV[3] history length to keep (0: no history, publish only)
-- ARGV[4] history age to keep, in milliseconds
-- ARGV[5] idempotency TTL, in milliseconds
-- ARGV[6] id to use when there is no history
-- ARGV[7] (optional) "1" to publish with SPUBLISH (Redis Cluster, sharded pub/sub)
-- Returns {id, receivers, replayed}: replayed is 1 when the idempotency key
-- was seen before and nothing new was published.
local function wsnotify_notify(keys, args)
  if keys[3] then
    local prev = redis.call('GET', keys[3])
    if prev then
      local sep = string.find(prev, ' ', 1, true)
      return {string.sub(prev, 1, sep - 1), tonumber(string.sub(prev, sep + 1)), 1}
    end
  end
  local typ, data = args[1], args[2]
  if #typ == 0 or #typ > 64 or not string.match(typ, '^[%w%._:%-]+$') then
    return redis.error_reply('ERR wsnotify: invalid type')
  end
  local id = args[6]
  local maxlen = tonumber(args[3])
  if maxlen > 0 then
    local maxage = tonumber(args[4])
    id = redis.call('XADD', keys[1], 'MAXLEN', '~', maxlen, '*', 't', typ, 'd', data)
    -- Trimming by age on one call in eight, by the clock, costs little and
    -- keeps old entries bounded: they are under the length bound anyway, and
    -- the whole stream expires maxage after its last notification.
    local now = tonumber(string.match(id, '^(%d+)'))
    if now % 8 == 0 then
      redis.call('XTRIM', keys[1], 'MINID', '~', now - maxage)
    end
    redis.call('PEXPIRE', keys[1], maxage)
  end
  local envelope = '{"id":"' .. id .. '","type":"' .. typ .. '","data":' .. data .. '}'
  local publish = 'PUBLISH'
  if args[7] == '1' then
    publish = 'SPUBLISH'
  end
  local receivers = redis.call(publish, keys[2], envelope)
  if keys[3] then
    redis.call('SET', keys[3], id .. ' ' .. receivers, 'PX', args[5])
  end
  return {id, receivers, 0}
end
