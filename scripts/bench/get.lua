-- wrk script: GET the path given on the command line with the bearer token from the environment.
wrk.headers["Authorization"] = "Bearer " .. os.getenv("EFMS_BENCH_TOKEN")
