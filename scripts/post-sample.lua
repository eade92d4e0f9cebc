-- wrk script: POST a sample packet the way OpenIM does.
-- SAMPLE names the file (default samples/text.json).
local path = os.getenv("SAMPLE") or "samples/text.json"
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json; charset=utf-8"
wrk.headers["operationID"] = "bench"
