#!/usr/bin/env python3
"""Drives an interactive program in a pseudo-terminal, as a person at a keyboard would.

Usage: pty_drive.py SCRIPT_JSON -- PROGRAM ARGS...
SCRIPT_JSON is a list of steps: {"expect": "text"} waits (up to 15 s) until the text has
appeared in the output since the previous expect; {"send": "text"} types it ("\\r" is Enter,
"\\u0003" is Ctrl-C, "\\u0004" is Ctrl-D); {"sleep": seconds} pauses. At the end the program
must exit within 15 s. Prints everything the program showed, then `EXIT <status>`.
"""
import json
import os
import pty
import select
import sys
import time


def main():
    split = sys.argv.index("--")
    steps = json.loads(sys.argv[1])
    argv = sys.argv[split + 1:]
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    seen = b""
    cursor = 0

    def pump(timeout):
        nonlocal seen
        ready, _, _ = select.select([fd], [], [], timeout)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return False
            if not data:
                return False
            seen += data
        return True

    for step in steps:
        if "send" in step:
            os.write(fd, step["send"].encode())
        elif "sleep" in step:
            end = time.time() + step["sleep"]
            while time.time() < end:
                pump(0.05)
        elif "expect" in step:
            want = step["expect"].encode()
            end = time.time() + 15
            while want not in seen[cursor:]:
                if time.time() > end or not pump(0.1):
                    sys.stdout.write(seen.decode("utf-8", "replace"))
                    print("\nTIMEOUT waiting for %r" % step["expect"])
                    os.kill(pid, 9)
                    sys.exit(1)
            cursor = seen.index(want, cursor) + len(want)
    end = time.time() + 15
    while time.time() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            while pump(0.05):
                pass
            sys.stdout.write(seen.decode("utf-8", "replace"))
            print("\nEXIT %d" % os.waitstatus_to_exitcode(status))
            return
        pump(0.05)
    sys.stdout.write(seen.decode("utf-8", "replace"))
    print("\nTIMEOUT waiting for exit")
    os.kill(pid, 9)
    sys.exit(1)


if __name__ == "__main__":
    main()
