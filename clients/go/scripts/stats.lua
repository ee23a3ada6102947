local t = redis.call('TIME')
local dead = 0
if redis.call('TYPE', KEYS[2]).ok == 'stream' then dead = redis.call('XLEN', KEYS[2]) end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {t[1], t[2], dead, 0, 0, 0, 0, 0, 0, '', '', {}, 0, 0}
end
local len = redis.call('XLEN', KEYS[1])
local grp = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == ARGV[1] then grp = f end
end
if grp == nil then
  return {t[1], t[2], dead, 1, len, 0, 0, len, 0, '', '', {}, 0, 0}
end
local ld = grp['last-delivered-id']
local redis_lag = grp['lag']
local limit = tonumber(ARGV[2])
local le, gt = 0, 0
local le_from, gt_from = '-', '(' .. ld
local lag = nil
local estimated = 0
local chunks = 0
while true do
  local r = redis.call('XRANGE', KEYS[1], le_from, ld, 'COUNT', 1000)
  le = le + #r
  if #r < 1000 then lag = len - le break end
  le_from = '(' .. r[#r][1]
  local r2 = redis.call('XRANGE', KEYS[1], gt_from, '+', 'COUNT', 1000)
  gt = gt + #r2
  if #r2 < 1000 then lag = gt break end
  gt_from = '(' .. r2[#r2][1]
  chunks = chunks + 1
  if chunks >= limit then
    estimated = 1
    if redis_lag then lag = redis_lag else lag = len - le end
    break
  end
end
local computed = 0
if estimated == 0 and (not redis_lag or redis_lag ~= lag) then computed = 1 end
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
local pending = summary[1]
local present = len - lag
if present > pending then present = pending end
if present < 0 then present = 0 end
local oldest = summary[2]
if not oldest then oldest = '' end
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
return {t[1], t[2], dead, 1, len, 1, pending, lag, computed, ld, oldest, consumers, estimated, present}
