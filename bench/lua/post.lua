-- POST one JSON body per request and print a JSON summary when wrk ends.
-- Settings come from the environment, set by bench/wrk.py:
--   BENCH_PATH, BENCH_BODY, BENCH_AUTH (an "Authorization" header value, or
--   empty), BENCH_UUID ("1": replace {uuid} in path and body with a
--   new random UUID per request).

local path = os.getenv("BENCH_PATH") or "/"
local body = os.getenv("BENCH_BODY") or "{}"
local auth = os.getenv("BENCH_AUTH") or ""
local per_request_uuid = os.getenv("BENCH_UUID") == "1"

local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("thread_number", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_number or 0))
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if auth ~= "" then
    wrk.headers["Authorization"] = auth
  end
end

local function uuid4()
  local template = "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx"
  return (template:gsub("[xy]", function(c)
    local v = (c == "x") and math.random(0, 15) or math.random(8, 11)
    return string.format("%x", v)
  end))
end

local fixed = nil

function request()
  if per_request_uuid then
    local id = uuid4()
    return wrk.format(nil, path:gsub("{uuid}", id), nil, body:gsub("{uuid}", id))
  end
  if fixed == nil then
    fixed = wrk.format(nil, path, nil, body)
  end
  return fixed
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write("BENCH_JSON ")
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,'
      .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
