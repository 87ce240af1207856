-- GET {PATH} with a bearer credential taken in turn from the file in BENCH_KEYS.
local keys, i = {}, 0
for line in io.lines(os.getenv("BENCH_KEYS")) do keys[#keys + 1] = line end
local path = os.getenv("BENCH_PATH")
request = function()
  i = i % #keys + 1
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. keys[i] })
end
