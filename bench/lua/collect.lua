-- Issues tokens (the request given with -s options via BENCH_* env) and writes each
-- access_token to BENCH_OUT, for the revocation scenario.
local out = io.open(os.getenv("BENCH_OUT"), "w")
local body = os.getenv("BENCH_BODY")
local auth = { ["Authorization"] = "Basic " .. os.getenv("BENCH_AUTH"),
               ["Content-Type"] = "application/x-www-form-urlencoded" }
request = function() return wrk.format("POST", os.getenv("BENCH_PATH"), auth, body) end
response = function(status, headers, b)
  local t = b:match('"access_token":"([^"]+)"')
  if t then out:write(t, "\n") end
end
done = function() out:close() end
