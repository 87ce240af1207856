-- Revocation followed by a check: for each token in BENCH_KEYS in turn, a revocation, then an
-- introspection of the same token. BENCH_REVOKE and BENCH_INTROSPECT are the paths; BENCH_AUTH
-- the Basic credentials.
local keys, i, revoke = {}, 0, true
for line in io.lines(os.getenv("BENCH_KEYS")) do keys[#keys + 1] = line end
local auth = { ["Authorization"] = "Basic " .. os.getenv("BENCH_AUTH"),
               ["Content-Type"] = "application/x-www-form-urlencoded" }
request = function()
  if revoke then i = i % #keys + 1 end
  local path = revoke and os.getenv("BENCH_REVOKE") or os.getenv("BENCH_INTROSPECT")
  revoke = not revoke
  return wrk.format("POST", path, auth, "token=" .. keys[i])
end
