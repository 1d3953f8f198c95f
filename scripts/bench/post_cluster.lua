-- wrk script: POST a new STATIC cluster with a unique name on every request.
local token = os.getenv("EFMS_BENCH_TOKEN")
local tenant = os.getenv("EFMS_BENCH_TENANT") or "acme"
local counter = 0
local thread_tag = tostring({}):sub(-6)

request = function()
  counter = counter + 1
  local name = "w-" .. thread_tag .. "-" .. counter
  local body = '{"name":"' .. name .. '","type":"STATIC","connect_timeout":"1s",'
    .. '"load_assignment":{"cluster_name":"' .. name .. '","endpoints":[{"lb_endpoints":[{"endpoint":'
    .. '{"address":{"socket_address":{"address":"127.0.0.1","port_value":8080}}}}]}]}}'
  return wrk.format("POST", "/api/v1/tenants/" .. tenant .. "/clusters",
    { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }, body)
end
