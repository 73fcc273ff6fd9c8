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
local function valid_type(typ)
  return #typ > 0 and #typ <= 64 and string.match(typ, '^[%w%._:%-]+$') ~= nil
end

-- store_and_publish appends one notification to stream (when maxlen > 0;
-- otherwise id names it) and publishes its envelope on channel. It returns
-- the id and the number of subscribers that received it.
local function store_and_publish(stream, channel, typ, data, maxlen, maxage, id, sharded)
  if maxlen > 0 then
    id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 't', typ, 'd', data)
    -- Trimming by age on one call in eight, by the clock, costs little and
    -- keeps old entries bounded: they are under the length bound anyway, and
    -- the whole stream expires maxage after its last notification.
    local now = tonumber(string.match(id, '^(%d+)'))
    if now % 8 == 0 then
      redis.call('XTRIM', stream, 'MINID', '~', now - maxage)
    end
    redis.call('PEXPIRE', stream, maxage)
  end
  local envelope = '{"id":"' .. id .. '","type":"' .. typ .. '","data":' .. data .. '}'
  local publish = 'PUBLISH'
  if sharded == '1' then
    publish = 'SPUBLISH'
  end
  return id, redis.call(publish, channel, envelope)
end

local function wsnotify_notify(keys, args)
  if keys[3] then
    local prev = redis.call('GET', keys[3])
    if prev then
      local sep = string.find(prev, ' ', 1, true)
      return {string.sub(prev, 1, sep - 1), tonumber(string.sub(prev, sep + 1)), 1}
    end
  end
  if not valid_type(args[1]) then
    return redis.error_reply('ERR wsnotify: invalid type')
  end
  local id, receivers = store_and_publish(keys[1], keys[2], args[1], args[2],
    tonumber(args[3]), tonumber(args[4]), args[6], args[7])
  if keys[3] then
    redis.call('SET', keys[3], id .. ' ' .. receivers, 'PX', args[5])
  end
  return {id, receivers, 0}
end

-- wsnotify_notify_many stores and publishes several notifications with
-- history in one call, as wsnotify_notify does each: the hub sends the
-- concurrent Notify calls of one partition this way, and Redis runs 1.6 times
-- as many notifications a second in calls of 16 as in calls of one. It checks
-- every type before it writes anything, so it either fails whole or runs
-- whole.
--
-- KEYS[2i-1], KEYS[2i]  history stream and user channel of notification i
-- ARGV[1] history length to keep (> 0)
-- ARGV[2] history age to keep, in milliseconds
-- ARGV[3] "1" to publish with SPUBLISH
-- ARGV[2+2i], ARGV[3+2i]  type and data of notification i
-- Returns {id1, receivers1, id2, receivers2, ...}.
local function wsnotify_notify_many(keys, args)
  local n = #keys / 2
  for i = 1, n do
    if not valid_type(args[2 + 2 * i]) then
      return redis.error_reply('ERR wsnotify: invalid type')
    end
  end
  local maxlen, maxage = tonumber(args[1]), tonumber(args[2])
  local out = {}
  for i = 1, n do
    out[2 * i - 1], out[2 * i] = store_and_publish(keys[2 * i - 1], keys[2 * i],
      args[2 + 2 * i], args[3 + 2 * i], maxlen, maxage, nil, args[3])
  end
  return out
end
