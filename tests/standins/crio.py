"""Stand-in crio for tests: logs like crio, listens on a real unix socket
(``--listen PATH``, required: it never touches the default path) after
$STANDIN_CRIO_DELAY seconds, and stays in the foreground until SIGTERM.

$STANDIN_CRIO_MODE: ``ok`` (default), ``never`` (never listens), ``fail``
(exits 1 at once, as crio does on a bad config).  Its pid goes to
$STANDIN_DIR/crio.pids, its argv to calls.jsonl.
$STANDIN_CRIO_LINGER=SECONDS: on SIGTERM it goes on that long as ``sleep``
(same pid, another command line), as a process does while it exits.
"""

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

DIR = Path(os.environ["STANDIN_DIR"])


def log(level, msg):
    print(f'time="{time.strftime("%H:%M:%S")}" level={level} msg="{msg}"', flush=True)


def main():
    args = sys.argv[1:]
    with open(DIR / "crio.pids", "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(DIR / "calls.jsonl", "a") as f:
        f.write(json.dumps({"argv": args, "cmd": "crio"}) + "\n")
    if "--listen" not in args:
        log("fatal", "stand-in crio needs --listen PATH")
        sys.exit(2)
    path = args[args.index("--listen") + 1]
    mode = os.environ.get("STANDIN_CRIO_MODE", "ok")
    log("info", "Starting CRI-O, version: 1.23.5 (stand-in)")
    if mode == "fail":
        log("fatal", "validating runtime config: cgroupfs manager conmon cgroup should be "
                     "'pod' or empty")
        sys.exit(1)
    signal.signal(signal.SIGTERM, lambda *_: stop(path))
    time.sleep(float(os.environ.get("STANDIN_CRIO_DELAY", "0")))
    if mode == "never":
        log("info", "stand-in: waiting for storage that never comes")
        while True:
            time.sleep(1)
    if os.path.exists(path):
        os.unlink(path)  # a stale socket, as crio does
    os.makedirs(os.path.dirname(path), exist_ok=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(16)
    log("info", f"Serving on {path}")
    while True:
        conn, _ = server.accept()
        conn.close()


def stop(path):
    log("info", "Received signal terminated, shutting down")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    linger = os.environ.get("STANDIN_CRIO_LINGER")
    if linger:  # its last work under another command line, same pid
        os.execv("/bin/sleep", ["sleep", linger])
    sys.exit(0)


if __name__ == "__main__":
    main()
