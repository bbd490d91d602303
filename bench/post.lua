-- wrk script used by bench/http_bench.py. Everything comes from environment variables, so one
-- script serves every target:
--
--   WRK_METHOD        HTTP method (default POST)
--   WRK_BODY          request body (default empty)
--   WRK_BODY_FILE     read the request body from this file instead (large or binary bodies)
--   WRK_CONTENT_TYPE  Content-Type header (default application/json)
--   WRK_AUTH          Authorization header value, e.g. "Bearer dev" (default: none)
--   WRK_HEADERS       extra headers, one "Name: value" per line
--   WRK_COUNT_STATUS  "0" disables the per-response status counting below (default on)
--
-- wrk itself only counts status >= 400 ("Non-2xx or 3xx responses"). This script counts every
-- response outside 200-299 and prints, after wrk's report:
--   Lua non-2xx responses: N
-- That count costs wrk a Lua call and a header table per response; with WRK_COUNT_STATUS=0 wrk skips
-- both (and parsing the headers) and the line is not printed: only wrk's own count is left.
--
-- Example:
--   WRK_BODY='{"input": [1,2,3]}' WRK_AUTH='Bearer dev' \
--     wrk -t2 -c32 -d15s --latency -s bench/post.lua http://127.0.0.1:8000/v1/models/echo/predict

wrk.method = os.getenv("WRK_METHOD") or "POST"
local body_file = os.getenv("WRK_BODY_FILE")
if body_file ~= nil and body_file ~= "" then
  local file = assert(io.open(body_file, "rb"))
  wrk.body = file:read("*a")
  file:close()
else
  wrk.body = os.getenv("WRK_BODY") or ""
end
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"

local auth = os.getenv("WRK_AUTH")
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

local extra = os.getenv("WRK_HEADERS")
if extra ~= nil then
  for line in string.gmatch(extra, "[^\r\n]+") do
    local name, value = string.match(line, "^%s*([^:]-)%s*:%s*(.-)%s*$")
    if name ~= nil and name ~= "" then
      wrk.headers[name] = value
    end
  end
end

-- Setup/done run in the main Lua state; init/response run in each thread's own state.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0 -- global on purpose: read back from the main state with thread:get()
  if os.getenv("WRK_COUNT_STATUS") == "0" then
    response = nil -- wrk then skips parsing headers/bodies entirely
  end
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  if os.getenv("WRK_COUNT_STATUS") == "0" then
    return
  end
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + (thread:get("non2xx") or 0)
  end
  io.write(string.format("Lua non-2xx responses: %d\n", total))
end
