-- One fixed request: BENCH_METHOD BENCH_PATH (from the URL) with BENCH_BODY (a form), and
-- Basic credentials (BENCH_AUTH) or a bearer credential (BENCH_BEARER) when set.
wrk.method = os.getenv("BENCH_METHOD") or "GET"
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end
local basic, bearer = os.getenv("BENCH_AUTH"), os.getenv("BENCH_BEARER")
if basic and basic ~= "" then wrk.headers["Authorization"] = "Basic " .. basic end
if bearer and bearer ~= "" then wrk.headers["Authorization"] = "Bearer " .. bearer end
