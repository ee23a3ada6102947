-- workpool protocol v1: submit one task with deduplication (docs/protocol.md, 4.3).
-- KEYS[1]: the partition's task stream P_i. KEYS[2]: its dedup key P_i:dedup:<task id>.
-- ARGV[1]: the dedup window in ms. ARGV[2..]: the entry's field/value pairs.
-- Returns {1, new entry id}, or {0, entry id of the task submitted earlier with this id}.
local seen = redis.call('GET', KEYS[2])
if seen then return {0, seen} end
local args = {'XADD', KEYS[1], '*'}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.call(unpack(args))
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return {1, id}
