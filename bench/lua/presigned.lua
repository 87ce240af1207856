-- One pre-signed token per request (bench/tools jwtgen), never sent twice: a client assertion
-- in the form (BENCH_SLOT=assertion) or a DPoP proof in the `DPoP` header (BENCH_SLOT=dpop),
-- read in order from BENCH_LINES. The rest of the request is fixed: BENCH_METHOD, the URL's
-- path, BENCH_BODY (a form), Basic credentials (BENCH_AUTH) or `Authorization: DPoP` with
-- BENCH_DPOP_TOKEN, and X-Original-URL (BENCH_ORIGINAL_URL). When the lines run out the thread
-- stops and says so on stderr (run.sh marks the row "ran out of pre-signed tokens"; wrk still
-- divides by the whole duration, so such a rate is understated): a replayed `jti` would be
-- refused and measure the refusal instead. run.sh makes twice as many tokens as core 0 can
-- verify in the scenario's time, so this does not happen.
local method = os.getenv("BENCH_METHOD") or "GET"
local slot = os.getenv("BENCH_SLOT")
local body = os.getenv("BENCH_BODY") or ""
local headers = {}
if body ~= "" or slot == "assertion" then headers["Content-Type"] = "application/x-www-form-urlencoded" end
local basic, dtoken = os.getenv("BENCH_AUTH"), os.getenv("BENCH_DPOP_TOKEN")
if basic and basic ~= "" then headers["Authorization"] = "Basic " .. basic end
if dtoken and dtoken ~= "" then headers["Authorization"] = "DPoP " .. dtoken end
local orig = os.getenv("BENCH_ORIGINAL_URL")
if orig and orig ~= "" then headers["X-Original-URL"] = orig end
local lines, n, i = {}, 0, 0
for l in io.lines(os.getenv("BENCH_LINES")) do n = n + 1; lines[n] = l end
local path = nil
init = function(args) path = wrk.path end
local prefix = body
if slot == "assertion" then
  prefix = (body ~= "" and body .. "&" or "") ..
    "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion="
end
request = function()
  i = i + 1
  if i > n then
    io.stderr:write("presigned.lua: all " .. n .. " pre-signed tokens sent; stopping\n")
    wrk.thread:stop()
    i = n
  end
  local l = lines[i]
  if slot == "assertion" then
    return wrk.format(method, path, headers, prefix .. l)
  end
  headers["DPoP"] = l
  return wrk.format(method, path, headers, body ~= "" and body or nil)
end
