#!/usr/bin/env python3
"""Runs a shell command once and prints a JSON record: its name, wall seconds, and the peak
resident memory of the command's processes (the largest one). Used by bench/files.sh.

Usage: measure.py NAME BYTES COMMAND   (BYTES: payload size, for MB/s; 0 if not meaningful)
"""
import json
import resource
import subprocess
import sys
import time

name, size, command = sys.argv[1], int(sys.argv[2]), sys.argv[3]
begin = time.perf_counter()
subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)
seconds = time.perf_counter() - begin
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
record = {"name": name, "seconds": round(seconds, 3), "client_peak_mib": round(peak_kib / 1024, 1)}
if size:
    record["mb_per_s"] = round(size / seconds / 1e6, 1)
print(json.dumps(record))
