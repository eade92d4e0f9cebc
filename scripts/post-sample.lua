-- wrk script: POST a sample packet the way OpenIM does.
-- SAMPLE names the file (default samples/text.json).
local path = os.getenv("SAMPLE") or "samples/text.json"
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json; charset=utf-8"
wrk.headers["operationID"] = "bench"

-- UNIQUE_IDS set: every request gets a serverMsgID of its own, as real traffic
-- has (a sink keyed by it, the SQL archive, then inserts every row).
if os.getenv("UNIQUE_IDS") then
    local template = wrk.body
    local prefix = "bench-" .. os.time() .. "-" .. math.random(1, 1000000000) .. "-"
    local counter = 0
    request = function()
        counter = counter + 1
        local body = template:gsub('"serverMsgID":"[^"]*"', '"serverMsgID":"' .. prefix .. counter .. '"', 1)
        return wrk.format(nil, nil, nil, body)
    end
end

-- DELAY_MS set: each connection waits that long between requests, a paced
-- load of at most connections * 1000 / DELAY_MS requests/s.
local delay_ms = tonumber(os.getenv("DELAY_MS") or "")
if delay_ms then
    delay = function()
        return delay_ms
    end
end
