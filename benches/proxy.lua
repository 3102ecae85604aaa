-- wrk script: every connection POSTs the OpenAPI seed's example proxy
-- request to gwproxy's /api/proxy, authenticated with a Dashboard secret.
--
-- One-line use, against a gwproxy whose config has that secret and a gateway
-- covering the target URL:
--
--   GWPROXY_SECRET=S GWPROXY_TARGET=http://127.0.0.1:8181/test-oas/get \
--     wrk -t2 -c64 -d15s --latency -s benches/proxy.lua http://127.0.0.1:3000/api/proxy
--
-- GWPROXY_SECRET is required; GWPROXY_TARGET defaults to the seed's example
-- gateway path. Everything is set once at load time, with no request() or
-- response() function, so wrk builds the request a single time and its Lua
-- costs nothing per request: the numbers measure gwproxy, not the script.
--
-- wrk counts only HTTP statuses >= 400 as failures. gwproxy answers 200 even
-- when the gateway did not (the gateway's status is inside the envelope), so
-- check the envelope once with curl before trusting a run; benches/bench.sh
-- does.

local secret = os.getenv("GWPROXY_SECRET")
if secret == nil or secret == "" then
  error("set GWPROXY_SECRET to a secret from gwproxy's config")
end

local target = os.getenv("GWPROXY_TARGET") or "http://127.0.0.1:8181/test-oas/get"
-- The URL goes into a JSON string unescaped, so refuse what would need escaping.
if target:find('["\\%c]') then
  error("GWPROXY_TARGET must not contain quotes, backslashes or control characters")
end

wrk.method = "POST"
wrk.headers["Authorization"] = secret
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"method":"GET","url":"' .. target .. '",'
  .. '"headers":{"test":"tyk","Content-Type":"application/json"},'
  .. '"body":{"name":"New Resource","description":"Description of the resource."}}'
