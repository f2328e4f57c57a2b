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
    """The JSON lines of a results file, by their `name`."""
    rows = {}
    for line in open(os.path.join(results, name)):
        record = json.loads(line)
        rows[record["name"]] = record
    return rows


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
    by = {(r["server"], r["connections"]): r for r in rows}
    out = ["| connections | server | requests/s | vs Python | vs tokio | p50 | p99 | server CPU | server CPU per request | vs Python | load generator CPU |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for conns in sorted({r["connections"] for r in rows}):
        py, tk = by.get(("python", conns)), by.get(("tokio", conns))
        for server in ["sockit", "plaintext", "python", "tokio"]:
            r = by.get((server, conns))
            if not r:
                continue
            vs_py = "%.2fx" % (r["rps"] / py["rps"]) if py and py["rps"] else "-"
            vs_tk = "%.2fx" % (r["rps"] / tk["rps"]) if tk and tk["rps"] else "-"
            per = r.get("server_cpu_us_per_request")
            py_per = py.get("server_cpu_us_per_request") if py else None
            eff = "%.2fx" % (py_per / per) if per and py_per else "-"
            out.append("| %d | %s | %s | %s | %s | %.0f µs | %.0f µs | %s%% | %s µs | %s | %d%% |" % (
                conns, NAMES[server], "{:,.0f}".format(r["rps"]), vs_py, vs_tk, r["p50_us"], r["p99_us"],
                "%.0f" % r["server_cpu_percent"] if r.get("server_cpu_percent") is not None else "-",
                "%.1f" % per if per else "-", eff, r["client_cpu_percent"]))
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
    ms = lambda name: rows[name]["p50_us"] / 1000
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
        "| 1 GiB of `head -c 1G /dev/zero` output, to /dev/null | seconds | MB/s | vs ssh |",
        "|---|---:|---:|---:|",
    ]
    gib = 1073741824 / 1e6
    ssh_s = rows["ssh_1g"]["seconds"]
    for name, label in [("sockit_1g", "sockit (Noise, AES-256-GCM)"), ("ssh_1g", "ssh -c aes128-gcm@openssh.com"),
                        ("local_1g", "locally, no network (ceiling)")]:
        sec = rows[name]["seconds"]
        out.append("| %s | %.2f | %.0f | %.2fx |" % (label, sec, gib / sec, ssh_s / sec))
    out.append("")
    out.append("Target: sockit ≥ 1.5x ssh's throughput: **%.2fx**." % (ssh_s / rows["sockit_1g"]["seconds"]))
    return out


def files_section(results):
    rows = load_rows(results, "files.jsonl")
    out = ["| 1 GiB | to tmpfs MB/s | to disk MB/s | client peak RSS |",
           "|---|---:|---:|---:|"]
    labels = [("sockit", "sockit TOOL, encrypted"), ("plain", "sockit TOOL --plaintext"), ("scp", "scp"),
              ("sftp", "sftp"), ("socat", "raw socat pipe (ceiling)"), ("python", "course's Python upload server")]
    for direction, verb in [("up", "upload"), ("down", "download")]:
        tool = "put" if direction == "up" else "get"
        for key, label in labels:
            t, d = rows.get("%s_%s_tmpfs" % (direction, key)), rows.get("%s_%s_disk" % (direction, key))
            if not t:
                continue
            out.append("| %s: %s | %.0f | %.0f | %.0f MiB |" % (verb, label.replace("TOOL", tool), t["mb_per_s"], d["mb_per_s"],
                                                              max(t["client_peak_mib"], d["client_peak_mib"])))
    servers = [r["server_peak_mib"] for name, r in rows.items() if name.startswith("server_peak")]
    out.append("")
    out.append("sockit servers' peak RSS over all transfers: %d MiB (target ≤ 64 MiB)." % max(servers))
    out += ["", "| 10,000 files of 4 KiB as a tree | to tmpfs, s | vs scp -r | to disk, s | vs scp -r |",
            "|---|---:|---:|---:|---:|"]
    tree = lambda key, place: rows["tree_%s_%s" % (key, place)]["seconds"]
    for key, label in [("sockit", "sockit put -r"), ("scp", "scp -r"), ("tar_nc", "tar \\| nc")]:
        cells = ["%.2f | %.1fx" % (tree(key, place), tree("scp", place) / tree(key, place)) for place in ["tmpfs", "disk"]]
        out.append("| %s | %s |" % (label, " | ".join(cells)))
    ratio = lambda a, b, place: rows["%s_%s" % (a, place)]["mb_per_s"] / rows["%s_%s" % (b, place)]["mb_per_s"]
    out += ["", "| target | tmpfs | disk |", "|---|---:|---:|"]
    for direction in ["up", "down"]:
        out.append("| %s: plaintext ≥ 0.8x the raw pipe | %.2fx | %.2fx |" % (
            direction, ratio(direction + "_plain", direction + "_socat", "tmpfs"),
            ratio(direction + "_plain", direction + "_socat", "disk")))
        out.append("| %s: encrypted ≥ 2x scp | %.2fx | %.2fx |" % (
            direction, ratio(direction + "_sockit", direction + "_scp", "tmpfs"),
            ratio(direction + "_sockit", direction + "_scp", "disk")))
    out.append("| small-file tree ≥ 5x scp -r | %.1fx | %.1fx |" % tuple(
        tree("scp", place) / tree("sockit", place) for place in ["tmpfs", "disk"]))
    return out


SECTIONS = {"echo": echo_section, "exec": exec_section, "files": files_section}


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
