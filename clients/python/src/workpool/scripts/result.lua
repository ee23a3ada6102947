-- workpool protocol v1: record a task's outcome and wake its waiters (docs/protocol.md, 8).
-- KEYS[1]: P_i:result:<task id>. KEYS[2]: P_i:notify:<task id>.
-- ARGV[1]: the TTL in ms. ARGV[2]: the state (done | dead). ARGV[3..]: the record's other
-- field/value pairs.
redis.call('DEL', KEYS[1], KEYS[2])
local args = {'HSET', KEYS[1], 'state', ARGV[2]}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
redis.call(unpack(args))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
