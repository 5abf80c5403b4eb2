"""Stand-in ip for tests: records ``ip netns exec NAME sysctl ...`` in
$STANDIN_DIR/calls.jsonl and answers like sysctl; never runs anything on the
host.  Any other use is an error."""

import json
import os
import sys
from pathlib import Path

DIR = Path(os.environ["STANDIN_DIR"])


def main():
    args = sys.argv[1:]
    with open(DIR / "calls.jsonl", "a") as f:
        f.write(json.dumps({"argv": args, "cmd": "ip"}) + "\n")
    if args[:2] == ["netns", "exec"] and len(args) >= 4 and args[3] == "sysctl":
        if args[4:5] == ["-w"] and len(args) == 6 and "=" in args[5]:
            key, value = args[5].split("=", 1)
            print(f"{key} = {value}")
            return
        print(f"sysctl: stand-in: unexpected arguments {args[4:]}", file=sys.stderr)
        sys.exit(255)
    print(f"stand-in ip: unexpected call {args}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
