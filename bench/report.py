#!/usr/bin/env python3
"""Turns a benchmark script's JSON results into its section of BENCHMARKS.md.

Usage: report.py SECTION RESULTS_DIR COMMAND
Each section sits between `<!-- SECTION:start -->` and `<!-- SECTION:end -->` markers; the
rest of BENCHMARKS.md (targets, discussion) is left as it is.
"""
import datetime
import json
import os
import platform
import re
import subprocess
import sys

NAMES = {
    "sockit": "sockit, encrypted (Noise)",
    "plaintext": "sockit `--plaintext` (HMAC)",
    "python": "course ThreadingTCPServer (Python)",
    "tokio": "minimal tokio echo (unframed)",
}


def load_rows(results, name):
    """The JSON lines of a results file, by their `name`: one record per round, in order."""
    rows = {}
    for line in open(os.path.join(results, name)):
        record = json.loads(line)
        rows.setdefault(record["name"], []).append(record)
    return rows


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def spread(values, fmt="%.0f"):
    """`median (lowest-highest)`, or just the value when there is one."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt % values[0]
    return "%s (%s–%s)" % (fmt % median(values), fmt % min(values), fmt % max(values))


def ratios(numerators, denominators):
    """Round by round: each round's figure over its anchor's figure of the same round."""
    return [a / b for a, b in zip(numerators, denominators) if a and b]


def ceiling(results, name):
    """The median of a machine ceiling (bench/ceilings.sh), if it was measured."""
    path = os.path.join(results, "ceilings.jsonl")
    if not os.path.exists(path):
        return None
    values = [r["mb_per_s"] for r in load_rows(results, "ceilings.jsonl").get(name, [])]
    return median(values) if values else None


def ceilings_section(results):
    rows = load_rows(results, "ceilings.jsonl")
    labels = [("iperf3_one_stream", "TCP over loopback, one stream (`iperf3 -t 5`)"),
              ("openssl_aes-256-gcm", "AES-256-GCM, 16 KiB blocks (`openssl speed -evp`): sockit's records"),
              ("openssl_aes-128-gcm", "AES-128-GCM, 16 KiB blocks: ssh's `aes128-gcm@openssh.com`"),
              ("openssl_chacha20-poly1305", "ChaCha20-Poly1305, 16 KiB blocks")]
    out = ["| ceiling | MB/s, median (range) |", "|---|---:|"]
    for name, label in labels:
        if name in rows:
            out.append("| %s | %s |" % (label, spread([r["mb_per_s"] for r in rows[name]])))
    return out


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return "%s, %d cores, Linux %s, %s" % (cpu, os.cpu_count(), platform.release(), rustc)


def echo_section(results):
    rows = [json.loads(line) for line in open(os.path.join(results, "echo.jsonl"))]
    runs = lambda server, conns: [r for r in rows if r["server"] == server and r["connections"] == conns]
    pick = lambda runs, key: [r.get(key) for r in runs]
    out = ["Each cell: the median of the rounds, with the lowest and highest in brackets; ratios are",
           "taken round by round against the anchor measured in the same round.", "",
           "| connections | server | requests/s | vs Python | vs tokio | p50 µs | p99 µs | server CPU per request, µs | vs tokio | load generator CPU |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for conns in sorted({r["connections"] for r in rows}):
        py, tk = runs("python", conns), runs("tokio", conns)
        for server in ["sockit", "plaintext", "python", "tokio"]:
            r = runs(server, conns)
            if not r:
                continue
            rps = pick(r, "rps")
            cpu = pick(r, "server_cpu_us_per_request")
            out.append("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s%% |" % (
                conns, NAMES[server], spread(rps), spread(ratios(rps, pick(py, "rps")), "%.2fx"),
                spread(ratios(rps, pick(tk, "rps")), "%.2fx"), spread(pick(r, "p50_us")), spread(pick(r, "p99_us")),
                spread(cpu, "%.1f"), spread(ratios(cpu, pick(tk, "server_cpu_us_per_request")), "%.2fx"),
                spread(pick(r, "client_cpu_percent"))))
    connect = json.load(open(os.path.join(results, "connect.json")))
    idle = json.load(open(os.path.join(results, "idle.json")))
    out += [
        "",
        "| measure | result | target |",
        "|---|---:|---:|",
        "| connect + Noise handshake + one echo + close, p50 (%d runs) | %.2f ms | ≤ 2 ms |"
        % (connect["count"], connect["p50_us"] / 1000),
        "| same, p99 | %.2f ms | |" % (connect["p99_us"] / 1000),
        "| server RSS holding %s idle authenticated sessions | %s MiB (%s MiB before) | ≤ 200 MiB |"
        % ("{:,}".format(idle["connections"]), idle["server_rss_held_mib"], idle["server_rss_before_mib"]),
        "| time to open them (64 handshakes in flight) | %.2f s | |" % idle["open_seconds"],
    ]
    return out


def exec_section(results):
    rows = load_rows(results, "exec.jsonl")
    ms = lambda name: median([r["p50_us"] for r in rows[name]]) / 1000
    fresh, ssh_fresh, ssh_cm = ms("sockit_fresh"), ms("ssh_fresh"), ms("ssh_controlmaster")
    session, local = ms("sockit_session"), ms("local_spawn")
    out = [
        "| running `true` | p50 | vs sockit |",
        "|---|---:|---:|",
        "| (a) `sockit exec HOST true`, a fresh process: connect + Noise handshake + run | %.2f ms | 1.00x |" % fresh,
        "| `ssh -p PORT 127.0.0.1 true`, fresh | %.2f ms | %.1fx slower |" % (ssh_fresh, ssh_fresh / fresh),
        "| `ssh` through a ControlMaster | %.2f ms | %.1fx slower |" % (ssh_cm, ssh_cm / fresh),
        "| (b) sockit, repeated over one session (`sockit bench exec`) | %.2f ms | |" % session,
        "| course's Python exec server, repeated over one connection | %.2f ms | |" % ms("course_session"),
        "| local spawn of `sh -c true` with pipes, as the server does it | %.2f ms | |" % local,
        "| local `sh -c true` as a whole process (hyperfine) | %.2f ms | |" % ms("local_sh"),
        "",
        "| target | result |",
        "|---|---|",
        "| (a) p50 ≤ 10 ms | %.2f ms |" % fresh,
        "| (a) ≥ 14x faster than fresh ssh | %.1fx |" % (ssh_fresh / fresh),
        "| (b) ≤ 1.5x local fork+exec of `sh -c true` | %.2fx (%.2f ms against %.2f ms) |" % (session / local, session, local),
        "",
        "| 1 GiB of `head -c 1G /dev/zero` output, to /dev/null, %d rounds | seconds | MB/s | vs ssh | of one TCP stream (iperf3) |"
        % len(rows["sockit_1g"]),
        "|---|---:|---:|---:|---:|",
    ]
    gib = 1073741824 / 1e6
    tcp = ceiling(results, "iperf3_one_stream")
    seconds = lambda name: [r["seconds"] for r in rows[name]]
    for name, label in [("sockit_1g", "sockit (Noise, AES-256-GCM)"), ("ssh_1g", "ssh -c aes128-gcm@openssh.com"),
                        ("local_1g", "locally, no network (ceiling)")]:
        rates = [gib / sec for sec in seconds(name)]
        out.append("| %s | %s | %s | %s | %s |" % (
            label, spread(seconds(name), "%.2f"), spread(rates), spread(ratios(seconds("ssh_1g"), seconds(name)), "%.2fx"),
            "%.0f%%" % (100 * median(rates) / tcp) if tcp else "-"))
    out.append("")
    out.append("Target: sockit ≥ 1.5x ssh's throughput: **%s**." % spread(ratios(seconds("ssh_1g"), seconds("sockit_1g")), "%.2fx"))
    return out


def files_section(results):
    rows = load_rows(results, "files.jsonl")
    rate = lambda name: [r["mb_per_s"] for r in rows.get(name, [])]
    tcp = ceiling(results, "iperf3_one_stream")
    rounds = len(rows.get("up_sockit_tmpfs", rows.get("tree_sockit_tmpfs", [])))
    out = ["Each cell: the median of %d rounds (lowest–highest); ratios are taken round by round." % rounds, "",
           "| 1 GiB | to tmpfs MB/s | to disk MB/s | tmpfs: of one TCP stream (iperf3) | client peak RSS |",
           "|---|---:|---:|---:|---:|"]
    labels = [("sockit", "sockit TOOL, encrypted"), ("plain", "sockit TOOL --plaintext"), ("scp", "scp"),
              ("sftp", "sftp"), ("socat", "raw socat pipe (ceiling)"), ("python", "course's Python upload server")]
    for direction, verb in [("up", "upload"), ("down", "download")]:
        tool = "put" if direction == "up" else "get"
        for key, label in labels:
            t, d = "%s_%s_tmpfs" % (direction, key), "%s_%s_disk" % (direction, key)
            if t not in rows:
                continue
            peak = max(r["client_peak_mib"] for r in rows[t] + rows.get(d, []))
            out.append("| %s: %s | %s | %s | %s | %.0f MiB |" % (
                verb, label.replace("TOOL", tool), spread(rate(t)), spread(rate(d)),
                "%.0f%%" % (100 * median(rate(t)) / tcp) if tcp else "-", peak))
    servers = [r["server_peak_mib"] for name, rs in rows.items() if name.startswith("server_peak") for r in rs]
    if servers:
        out += ["", "sockit servers' peak RSS over all transfers: %d MiB (target ≤ 64 MiB)." % max(servers)]
    out += ["", "| 10,000 files of 4 KiB as a tree | to tmpfs, s | vs scp -r | to disk, s | vs scp -r |",
            "|---|---:|---:|---:|---:|"]
    tree = lambda key, place: [r["seconds"] for r in rows["tree_%s_%s" % (key, place)]]
    for key, label in [("sockit", "sockit put -r"), ("scp", "scp -r"), ("tar_nc", "tar \\| nc")]:
        cells = ["%s | %s" % (spread(tree(key, place), "%.2f"), spread(ratios(tree("scp", place), tree(key, place)), "%.1fx"))
                 for place in ["tmpfs", "disk"]]
        out.append("| %s | %s |" % (label, " | ".join(cells)))
    against = lambda a, b, place: spread(ratios(rate("%s_%s" % (a, place)), rate("%s_%s" % (b, place))), "%.2fx")
    out += ["", "| target | tmpfs | disk |", "|---|---:|---:|"]
    for direction in ["up", "down"]:
        if "%s_sockit_tmpfs" % direction not in rows:
            continue
        out.append("| %s: plaintext ≥ 0.8x the raw pipe | %s | %s |" % (
            direction, against(direction + "_plain", direction + "_socat", "tmpfs"),
            against(direction + "_plain", direction + "_socat", "disk")))
        out.append("| %s: encrypted ≥ 2x scp | %s | %s |" % (
            direction, against(direction + "_sockit", direction + "_scp", "tmpfs"),
            against(direction + "_sockit", direction + "_scp", "disk")))
    out.append("| small-file tree ≥ 5x scp -r | %s | %s |" % tuple(
        spread(ratios(tree("scp", place), tree("sockit", place)), "%.1fx") for place in ["tmpfs", "disk"]))
    return out


SECTIONS = {"ceilings": ceilings_section, "echo": echo_section, "exec": exec_section, "files": files_section}


def main():
    section, results, command = sys.argv[1], sys.argv[2], sys.argv[3]
    body = SECTIONS[section](results)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = ["<!-- %s:start -->" % section,
             "Measured %s on %s." % (stamp, machine()),
             "Command: `%s`" % command.strip(), ""] + body + ["<!-- %s:end -->" % section]
    path = "BENCHMARKS.md"
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    pattern = re.compile(r"<!-- %s:start -->.*?<!-- %s:end -->" % (section, section), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: "\n".join(block), text)
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(block) + "\n"
    open(path, "w").write(text)
    print("\n".join(block))


if __name__ == "__main__":
    main()
