-- workpool protocol v1: retry dead letters (docs/protocol.md, 6).
-- KEYS[1]: the partition's task stream P_i. KEYS[2]: its dead-letter stream.
-- ARGV[1]: the key prefix P_i of the partition's result and notification keys.
-- ARGV[2..]: dead-letter entry ids.
-- Each dead letter still present is, in one step, added back to KEYS[1] with the task's
-- original fields (payload first; the dead letter's own fields dropped; orig_X renamed
-- back to X for the reserved names; `id` = original_id and `id_source` = `entry` when the
-- task had no id, so it keeps its task id and workers accept that id although it has
-- the form of an entry id), deleted from KEYS[2], and its task's result and notification
-- keys are deleted. Returns one {dead-letter id, new entry id or nil} per ARGV id.
local reserved = {original_id = true, error = true, deliveries = true,
                  stream = true, group = true, consumer = true}
local out = {}
for i = 2, #ARGV do
  local r = redis.call('XRANGE', KEYS[2], ARGV[i], ARGV[i])
  if #r == 1 then
    local f = r[1][2]
    local args = {'XADD', KEYS[1], '*'}
    local original_id, task_id = nil, nil
    for j = 1, #f, 2 do
      local k, v = f[j], f[j + 1]
      if k == 'original_id' then original_id = v end
      if not reserved[k] then
        if string.sub(k, 1, 5) == 'orig_' then
          local base = string.sub(k, 6)
          if reserved[base] or base == 'payload' then k = base end
        end
        args[#args + 1] = k
        args[#args + 1] = v
        if k == 'id' and task_id == nil then task_id = v end
      end
    end
    if task_id == nil and original_id ~= nil then
      task_id = original_id
      args[#args + 1] = 'id'
      args[#args + 1] = original_id
      args[#args + 1] = 'id_source'
      args[#args + 1] = 'entry'
    end
    local new_id = redis.call(unpack(args))
    redis.call('XDEL', KEYS[2], ARGV[i])
    if task_id ~= nil then
      redis.call('DEL', ARGV[1] .. ':result:' .. task_id, ARGV[1] .. ':notify:' .. task_id)
    end
    out[#out + 1] = {ARGV[i], new_id}
  else
    out[#out + 1] = {ARGV[i], false}
  end
end
return out
