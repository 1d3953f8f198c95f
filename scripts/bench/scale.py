"""The scale benchmark's client (scripts/bench-scale.sh): builds tenants of the given sizes by bulk,
times single PUTs in each, times a bulk of creations into an empty tenant and into the largest one,
and reads efms's resident memory. With EFMS_BENCH_EVENTS, then fills the log to that many events
(bulk replaces of the largest tenant), times `?revision=` and `?at=` reads of one resource and of a
page in the second half of that history, and times `efms replay`. EFMS_BENCH_ONLY=history measures
only that, on a database kept from an earlier run (EFMS_BENCH_KEEP_DB=1). Prints a Markdown table."""
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.parse

origin, token, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
sizes = [int(s) for s in os.environ.get("EFMS_BENCH_SIZES", "100,10000,100000").split(",")]
puts = int(os.environ.get("EFMS_BENCH_PUTS", "200"))
bulk = int(os.environ.get("EFMS_BENCH_BULK", "10000"))
chunk = int(os.environ.get("EFMS_BENCH_CHUNK", "10000"))
url = urllib.parse.urlparse(origin)
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}


def request(method, path, body=None):
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise SystemExit(f"{method} {path}: {response.status} {data[:500]!r}")
    return response, (json.loads(data) if data else None)


def cluster(name, port=8080):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def run_bulk(tenant, operations, message):
    """One POST /bulk, waited for to the job's end; its result."""
    body = {"message": message, "operations": operations}
    response, result = request("POST", f"/api/v1/tenants/{tenant}/bulk", body)
    if response.status == 202:
        location = response.getheader("location")
        while not result.get("finished_at"):
            time.sleep(0.02)
            _, result = request("GET", location)
        if result.get("state") != "succeeded":
            raise SystemExit(f"bulk job did not succeed: {json.dumps(result)[:500]}")
    return result


def bulk_create(tenant, names):
    """One POST /bulk of creations; seconds from the POST to the job's end."""
    start = time.monotonic()
    run_bulk(tenant, [{"op": "create", "kind": "clusters", "resource": cluster(name)}
                      for name in names], "bench")
    return time.monotonic() - start


def fill(tenant, count):
    """Creates clusters c-0 .. c-(count-1) by bulks of `chunk`."""
    done = 0
    while done < count:
        n = min(chunk, count - done)
        bulk_create(tenant, [f"c-{i}" for i in range(done, done + n)])
        done += n


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def rss_mib():
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


rows = []
only_history = os.environ.get("EFMS_BENCH_ONLY") == "history"
for size in ([] if only_history else sizes):
    tenant = f"s{size}"
    request("POST", "/api/v1/tenants", {"slug": tenant, "name": tenant})
    start = time.monotonic()
    fill(tenant, size)
    built = time.monotonic() - start
    times = []
    for i in range(puts):
        name = f"c-{(i * 7919) % size}"
        start = time.monotonic()
        request("PUT", f"/api/v1/tenants/{tenant}/clusters/{name}", cluster(name, 9000 + i))
        times.append((time.monotonic() - start) * 1000)
    rows.append((f"single PUT in a tenant of {size:,} resources (built in {built:.1f} s)",
                 f"p50 {percentile(times, 50):.1f} ms, p99 {percentile(times, 99):.1f} ms ({puts} PUTs)"))
    print(f"# {rows[-1][0]}: {rows[-1][1]}", file=sys.stderr, flush=True)

largest = max(sizes)


def history_marks(tenant):
    """(revision, time) of the tenant's `main` revisions in the second half of its history."""
    out = subprocess.run(
        ["psql", "-tAq", "-F", " ", os.environ["DATABASE_URL"], "-c",
         "SELECT r.revision, to_char(r.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
         "FROM config_revisions r JOIN tenants t USING (tenant_id) "
         f"WHERE t.slug = '{tenant}' AND r.branch = 'main' ORDER BY r.revision"],
        check=True, capture_output=True, text=True).stdout.split("\n")
    marks = [(int(line.split()[0]), line.split()[1]) for line in out if line.strip()]
    return marks[len(marks) // 2:]


if not only_history:
    rss = rss_mib()
    rows.append((f"efms resident memory with tenants of {', '.join(f'{s:,}' for s in sizes)} resources",
                 f"{rss:.0f} MiB ({rss * 1024 * 1024 / sum(sizes):.0f} bytes per resource)"))
    request("POST", "/api/v1/tenants", {"slug": "empty", "name": "empty"})
    into_empty = bulk_create("empty", [f"b-{i}" for i in range(bulk)])
    rows.append((f"bulk of {bulk:,} creations into a tenant holding 0", f"{into_empty:.2f} s"))
    into_large = bulk_create(f"s{largest}", [f"b-{i}" for i in range(bulk)])
    rows.append((f"bulk of {bulk:,} creations into a tenant holding {largest:,}",
                 f"{into_large:.2f} s ({into_large / into_empty:.2f}x)"))


def events_in_log():
    out = subprocess.run(["psql", "-tAq", os.environ["DATABASE_URL"], "-c", "SELECT count(*) FROM events"],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def timed_reads(paths, rounds):
    times = []
    for i in range(rounds):
        path = paths[i % len(paths)]
        start = time.monotonic()
        request("GET", path)
        times.append((time.monotonic() - start) * 1000)
    return f"p50 {percentile(times, 50):.1f} ms, p99 {percentile(times, 99):.1f} ms ({rounds} GETs)"


target_events = int(os.environ.get("EFMS_BENCH_EVENTS", "0"))
if target_events:
    # History: the largest tenant's clusters replaced by bulks until the log holds the target.
    tenant = f"s{largest}"
    round_ = 0
    while events_in_log() < target_events:
        round_ += 1
        result = run_bulk(tenant, [
            {"op": "replace", "kind": "clusters", "resource": cluster(f"c-{i}", 10000 + round_ % 50000)}
            for i in range(min(chunk, largest))], "history")
        if result.get("revision") is None:
            print(f"# history round {round_} changed nothing: {json.dumps(result)[:300]}",
                  file=sys.stderr, flush=True)
        time.sleep(1.05)  # distinct seconds, so `?at=` lands on distinct revisions
    events = events_in_log()
    print(f"# log filled to {events:,} events in {round_} bulks", file=sys.stderr, flush=True)
    base = f"/api/v1/tenants/{tenant}/clusters"
    middle = history_marks(tenant)
    one = [f"{base}/c-{(i * 7919) % largest}?revision={rev}" for i, (rev, _) in enumerate(middle)]
    one_at = [f"{base}/c-{(i * 7919) % largest}?at={at}" for i, (_, at) in enumerate(middle)]
    page = [f"{base}?limit=100&revision={rev}" for rev, _ in middle]
    page_at = [f"{base}?limit=100&at={at}" for _, at in middle]
    rows.append((f"`?revision=` read of one resource after {events:,} events", timed_reads(one, 300)))
    rows.append((f"`?at=` read of one resource after {events:,} events", timed_reads(one_at, 300)))
    rows.append((f"`?revision=` page of 100 after {events:,} events", timed_reads(page, 300)))
    rows.append((f"`?at=` page of 100 after {events:,} events", timed_reads(page_at, 300)))
if target_events and os.environ.get("EFMS_BENCH_REPLAY", "1") != "0":
    start = time.monotonic()
    subprocess.run([os.environ["EFMS_BENCH_EFMS"], "replay"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    replay = time.monotonic() - start
    rows.append((f"`efms replay` of {events:,} events (every read model, every tenant)",
                 f"{replay:.1f} s ({events / replay:,.0f} events/s)"))

print("| measurement | figure |")
print("|---|---|")
for name, figure in rows:
    print(f"| {name} | {figure} |")
