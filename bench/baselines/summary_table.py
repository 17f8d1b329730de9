#!/usr/bin/python3
"""bench/baselines/summary_table.py - markdown tables from SUMMARY lines.

  build/bench/cmp_latency > cmp.log; build/bench/goodput > gp.log
  /usr/bin/python3 bench/baselines/summary_table.py cmp.log gp.log

Prints the tables of bench/README.md ("Comparison figures") from the
SUMMARY lines of cmp_latency and goodput, so the README's figures are
copied by a program, not by hand.  When a scenario appears in several
files, the last one read wins (pass a re-run after the run it replaces).
"""
import sys


def parse(line):
    f = line.split()
    if len(f) < 2 or f[0] != "SUMMARY":
        return None
    d = {"_kind": f[1]}
    for kv in f[2:]:
        k, _, v = kv.partition("=")
        d[k] = v
    return d


def num(v):
    return "{:,}".format(int(float(v))).replace(",", " ")


def main(paths):
    lat, strat, wake, gp, base = {}, {}, {}, [], []
    for p in paths:
        with open(p) as f:
            for line in f:
                d = parse(line)
                if not d:
                    continue
                k = d["_kind"]
                if k == "cmp_latency":
                    key = (int(d["keys"]), int(d["procs"]))
                    if d["impl"] == "keymesh":
                        strat.setdefault(key, {})[d["strategy"]] = d
                    if d["strategy"] == "round_robin":
                        lat.setdefault(key, {})[d["impl"]] = d
                elif k == "cmp_wake":
                    wake[d["impl"]] = d
                elif k == "goodput":
                    gp.append(d)
                elif k == "cmp_baseline":
                    base.append(d)
    for b in base:
        print("Baseline: clock_ns=%s, load average (1 min) at start %s, %s CPUs."
              % (b["clock_ns"], b.get("loadavg_1m", "?"), b.get("nproc", "?")))
    if lat:
        print()
        print("| keys | procs | impl | p50 ns | p99 ns | p99.9 ns | pairs/s | cpu share "
              "| × p50 | × p99 | × p99.9 | × ops |")
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        order = ["keymesh", "mutex", "redis", "py_thread", "py_mp"]
        for key in sorted(lat):
            for impl in order:
                d = lat[key].get(impl)
                if not d:
                    continue
                x = lambda n: "" if impl == "keymesh" else d[n]
                print("| %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
                      % (key[0], key[1], impl, num(d["p50_ns"]), num(d["p99_ns"]),
                         num(d["p999_ns"]), num(d["ops_per_s"]), d["min_cpu_share"],
                         x("x_p50"), x("x_p99"), x("x_p999"), x("x_ops")))
    if strat:
        names = ["round_robin", "least_busy", "weighted", "latency", "cost", "reliability",
                 "fill_first"]
        for keys in sorted({k[0] for k in strat}):
            procs = sorted(p for (k, p) in strat if k == keys)
            print()
            print("KeyMesh strategies, %d keys: p50 / p99.9 ns per pair, pairs/s (all procs)"
                  % keys)
            print()
            print("| strategy | " + " | ".join("procs=%d" % p for p in procs) + " |")
            print("|---|" + "---:|" * len(procs))
            for s in names:
                cells = []
                for p in procs:
                    d = strat[(keys, p)].get(s)
                    cells.append("%s / %s, %s" % (num(d["p50_ns"]), num(d["p999_ns"]),
                                                  num(d["ops_per_s"])) if d else "")
                print("| %s | %s |" % (s, " | ".join(cells)))
    if wake:
        print()
        print("| wake-up | rounds | p50 ns | p99 ns | p99.9 ns | max ns | × p50 | × p99 |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for impl, d in wake.items():
            print("| %s | %s | %s | %s | %s | %s | %s | %s |"
                  % (impl, d["rounds"], num(d["p50_ns"]), num(d["p99_ns"]), num(d["p999_ns"]),
                     num(d["max_ns"]), d["x_p50"], d["x_p99"]))
    if gp:
        print()
        print("| mode | procs | seconds | headroom ms | demand × | sent | 200 | 429 | 429 % "
              "| capacity used % | tokens % | requests % | wait p50 ms | wait p99 ms "
              "| wait p99.9 ms | wait max ms | timeouts (mean tokens) | send delay max µs |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for d in gp:
            print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s "
                  "| %s | %s (%s) | %s |"
                  % (d["mode"], d["procs"], d["seconds"], d.get("headroom_ms", "0"),
                     d["demand_x"], d["sent"], d["upstream_ok"], d["upstream_429"],
                     d["rate_429_pct"], d["capacity_used_pct"], d["tokens_used_pct"],
                     d["requests_used_pct"], d["wait_p50_ms"], d["wait_p99_ms"],
                     d.get("wait_p999_ms", ""), d.get("wait_max_ms", ""), d["timeouts"],
                     d.get("timeout_mean_tokens", ""), d.get("send_delay_max_us", "")))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
