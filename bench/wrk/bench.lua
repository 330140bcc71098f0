-- bench/wrk/bench.lua: the wrk script of bench/run.
--
-- Sends one fixed POST (body from the file named by BENCH_BODY, bearer key from BENCH_KEY
-- when set, extra headers from BENCH_HEADERS, path BENCH_PATH, default /v1/chat/completions)
-- on every connection, counts 2xx and non-2xx responses in response(), and prints one line in
-- done():
--
--   BENCH_RESULT {"ok":…,"non_2xx":…,"ok_in_window":…,"sent":…,"rps":…,"p50_ms":…,…}
--
-- Drain, so that the ledger can be compared exactly: requests start only during the first
-- BENCH_MEASURE_SECONDS of the run; after that delay() parks every connection once its
-- answer is in, so the requests in flight at the deadline still complete and are counted.
-- Run wrk with -d at least one second longer than BENCH_MEASURE_SECONDS. Throughput is the
-- 2xx answers completed inside the window divided by its length; "sent" minus answers and
-- socket errors is what never came back (0 after a full drain).
local ffi = require("ffi")

ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
int clock_gettime(int clk_id, bench_timespec_t *tp);
]])

local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec_t")

local function now()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
    return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) / 1e9
end

local measure = tonumber(os.getenv("BENCH_MEASURE_SECONDS") or "5")
local parked_ms = 3600 * 1000

-- Main Lua state: one entry per wrk thread, read back in done().
local threads = {}

function setup(thread)
    thread:set("deadline", now() + measure)
    table.insert(threads, thread)
end

-- Per-thread state (globals, so that done() can read them with thread:get).
ok = 0
non_2xx = 0
ok_in_window = 0
sent = 0
deadline = 0

local req

function init(args)
    local path = os.getenv("BENCH_BODY") or error("BENCH_BODY is not set")
    local f = assert(io.open(path, "rb"))
    local body = f:read("*a")
    f:close()
    local headers = { ["Content-Type"] = "application/json" }
    -- BENCH_HEADERS: extra "Name: value" headers separated by '|'.
    for h in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^|]+") do
        local name, value = string.match(h, "^%s*([^:]+):%s*(.-)%s*$")
        if name then
            headers[name] = value
        end
    end
    local key = os.getenv("BENCH_KEY")
    if key and key ~= "" then
        headers["Authorization"] = "Bearer " .. key
    end
    req = wrk.format("POST", os.getenv("BENCH_PATH") or "/v1/chat/completions", headers, body)
end

function request()
    sent = sent + 1
    return req
end

function delay()
    if now() < deadline then
        return 0
    end
    return parked_ms
end

function response(status, headers, body)
    if status >= 200 and status < 300 then
        ok = ok + 1
        if now() < deadline then
            ok_in_window = ok_in_window + 1
        end
    else
        non_2xx = non_2xx + 1
    end
end

function done(summary, latency, requests)
    local t = { ok = 0, non_2xx = 0, ok_in_window = 0, sent = 0 }
    for _, thread in ipairs(threads) do
        for k in pairs(t) do
            t[k] = t[k] + (thread:get(k) or 0)
        end
    end
    -- wrk calls request() once before the run, on the first thread, to detect pipelining.
    t.sent = t.sent - 1
    local e = summary.errors
    io.write(string.format(
        'BENCH_RESULT {"ok":%d,"non_2xx":%d,"ok_in_window":%d,"sent":%d,"window_s":%.3f,'
            .. '"rps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,'
            .. '"wrk_requests":%d,"wrk_duration_s":%.3f,'
            .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
        t.ok, t.non_2xx, t.ok_in_window, t.sent, measure,
        t.ok_in_window / measure,
        latency:percentile(50) / 1000, latency:percentile(90) / 1000,
        latency:percentile(99) / 1000, latency.max / 1000,
        summary.requests, summary.duration / 1e6,
        e.connect, e.read, e.write, e.status, e.timeout))
end
