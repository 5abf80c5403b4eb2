"""Stand-in crictl (cri-tools v1.23.0) for tests: parses like the real one and
keeps CRI-O's side (images, pods, containers) in a JSON file.

Like the real one: global flags, then the subcommand, then its flags, then
its arguments; flags after the first argument are not flags (urfave/cli
stops there), so ``runp pod.json --runtime=kata`` runs with the default
handler.  An undefined flag is an error.  ``create`` with other than three
arguments prints the usage and exits 0 with no ID.  Every command needs the
endpoint's socket to accept a connection.  An unknown runtime handler fails
with CRI-O's message.  IDs are 64 hex digits.

Every call is appended to $STANDIN_DIR/calls.jsonl: argv, the parsed parts,
and a copy of each JSON file it was given.  $STANDIN_RUNTIMES lists the
handlers (default: runc,kata).

CRI-O's side, as a test wants it:

* $STANDIN_FAIL=CMD makes that subcommand fail; with $STANDIN_FAIL_MSG it
  fails with that message from CRI-O, as crictl 1.23 prints it (``runp``:
  ``run pod sandbox: rpc error: code = Unknown desc = MSG``, ``create``:
  ``creating container: ...``, ``start``: ``starting the container "ID":
  ...``, ``pull``: ``pulling image: ...``; $STANDIN_FAIL_CODE for another
  gRPC code), on stderr as logrus's fatal line.
* $STANDIN_OFFLINE=1: no registry answers: ``pull`` fails as CRI-O 1.23 does
  offline, and so does ``runp`` while CRI-O lacks its pause image
  ($STANDIN_PAUSE_IMAGE, default k8s.gcr.io/pause:3.6), which ``runp``
  otherwise pulls.
* $STANDIN_CNI=none: no CNI config: ``info`` says NetworkReady is false, and
  ``runp`` waits until crictl's deadline (it fails with DeadlineExceeded).
* ``start`` appends a line to the container's log (log_directory/log_path),
  as conmon does.
"""

import json
import os
import socket
import sys
import time

# os.path and os.urandom rather than pathlib and secrets: this runs a dozen
# times per pod test, and those imports doubled its start.
DIR = os.environ["STANDIN_DIR"]
STATE = os.path.join(DIR, "crictl-state.json")


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def token_hex(n: int) -> str:
    return os.urandom(n).hex()

GLOBAL = {"--runtime-endpoint": 1, "-r": 1, "--image-endpoint": 1, "-i": 1, "--timeout": 1,
          "-t": 1, "--debug": 0, "-D": 0, "--config": 1, "-c": 1}
FLAGS = {
    "version": {},
    "info": {"-o": 1, "--output": 1},
    "images": {"-q": 0, "--quiet": 0, "-v": 0, "--digests": 0, "--no-trunc": 0, "-o": 1},
    "inspecti": {"-o": 1, "-q": 0},
    "pull": {"--creds": 1, "--auth": 1, "--pod-config": 1},
    "runp": {"--runtime": 1, "-r": 1, "--cancel-timeout": 1, "-T": 1},
    "create": {"--no-pull": 0, "--with-pull": 0, "--creds": 1, "--auth": 1,
               "--cancel-timeout": 1, "-T": 1},
    "start": {},
    "exec": {"-s": 0, "--sync": 0, "-t": 0, "--tty": 0, "-i": 0, "--interactive": 0,
             "--timeout": 1},
    "inspectp": {"-o": 1, "--output": 1, "-q": 0},
    "inspect": {"-o": 1, "--output": 1, "-q": 0},
    "stopp": {},
    "rmp": {"-f": 0, "--force": 0, "-a": 0, "--all": 0},
    "pods": {"-q": 0, "--quiet": 0, "--label": 1, "-l": 1, "--name": 1, "--id": 1,
             "-s": 1, "--state": 1, "-v": 0, "-o": 1, "--no-trunc": 0},
    "ps": {"-a": 0, "--all": 0, "-q": 0, "-p": 1, "--pod": 1, "-o": 1, "--name": 1},
}


PAUSE = os.environ.get("STANDIN_PAUSE_IMAGE", "k8s.gcr.io/pause:3.6")
RESOLVER = "10.0.2.3:53"
WHAT = {"runp": "run pod sandbox", "create": "creating container", "pull": "pulling image"}


def die(msg, code=1):
    # logrus quotes a message with spaces or quotes the way Go's %q does
    print(f'time="2024-05-02T10:11:12Z" level=fatal msg={json.dumps(msg)}', file=sys.stderr)
    sys.exit(code)


def rpc(cmd, args, desc, code="Unknown"):
    what = WHAT.get(cmd) or (f"starting the container {json.dumps(args[0] if args else '')}"
                            if cmd == "start" else cmd)
    die(f"{what}: rpc error: code = {code} desc = {desc}")


def unreachable(image):
    registry = image.split("/", 1)[0] if "/" in image else "docker.io"
    return (f"initializing source docker://{image}: pinging container registry {registry}: "
            f"Get \"https://{registry}/v2/\": dial tcp: lookup {registry} on {RESOLVER}: "
            "no such host")


def parse(args, known):
    flags, i = {}, 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        name, eq, value = args[i].partition("=")
        if name not in known:
            print(f"flag provided but not defined: {name}", file=sys.stderr)
            sys.exit(1)
        if known[name] and not eq:
            i += 1
            if i >= len(args):
                die(f"flag needs an argument: {name}")
            value = args[i]
        flags.setdefault(name, []).append(value if known[name] else True)
        i += 1
    return flags, args[i:]


def one(flags, *names):
    for n in names:
        if n in flags:
            return flags[n][-1]
    return None


def load():
    try:
        return json.loads(read_text(STATE))
    except FileNotFoundError:
        return {"images": {}, "pods": {}, "containers": {}}


def save(state):
    with open(STATE, "w") as f:
        f.write(json.dumps(state, indent=1))


def connect(endpoint):
    path = endpoint[len("unix://"):] if endpoint.startswith("unix://") else endpoint
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    except OSError:
        die(f"connect: connect endpoint '{endpoint}', make sure you are running as root and "
            "the endpoint has been started: context deadline exceeded")
    finally:
        s.close()


def main():
    argv = sys.argv[1:]
    gflags, rest = parse(argv, GLOBAL)
    if not rest or rest[0] not in FLAGS:
        die(f"unknown or missing command: {rest[:1]}")
    cmd = rest[0]
    flags, args = parse(rest[1:], FLAGS[cmd])
    entry = {"argv": argv, "global": gflags, "cmd": cmd, "flags": flags, "args": args,
             "files": {}}
    for a in args:
        if a.endswith(".json") and os.path.isfile(a):
            entry["files"][a] = json.loads(read_text(a))
    with open(os.path.join(DIR, "calls.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")
    endpoint = one(gflags, "--runtime-endpoint", "-r")
    if not endpoint:
        die("no runtime endpoint given (the stand-in never probes the real ones)")
    connect(endpoint)
    if os.environ.get("STANDIN_FAIL") == cmd:
        if os.environ.get("STANDIN_FAIL_MSG"):
            rpc(cmd, args, os.environ["STANDIN_FAIL_MSG"],
                os.environ.get("STANDIN_FAIL_CODE", "Unknown"))
        die(f"{cmd}: stand-in failure on purpose: rpc error: code = Unknown")
    state = load()
    globals()["do_" + cmd](state, flags, args)
    save(state)


def new_id():
    return token_hex(32)


def do_version(state, flags, args):
    print("Version:  0.1.0\nRuntimeName:  cri-o\nRuntimeVersion:  1.23.5\n"
          "RuntimeApiVersion:  v1alpha2")


def do_info(state, flags, args):
    ready = os.environ.get("STANDIN_CNI") != "none"
    print(json.dumps({"status": {"conditions": [
        {"type": "RuntimeReady", "status": True, "reason": "", "message": ""},
        {"type": "NetworkReady", "status": ready,
         "reason": "" if ready else "NetworkPluginNotReady",
         "message": "" if ready else "Network plugin returns error: No CNI configuration file "
                                     "in /etc/cni/net.d/. Has your network provider started?"},
    ]}}, indent=2))


def do_images(state, flags, args):
    for ref, image_id in state["images"].items():
        if not args or args[0] == ref:
            print(image_id if "-q" in flags else f"{ref}\t{image_id[:13]}")


def do_inspecti(state, flags, args):
    if not args or args[0] not in state["images"]:
        die(f"no such image {args[:1]} present")
    print(json.dumps({"status": {"id": state["images"][args[0]], "repoTags": [args[0]]}}))


def do_pull(state, flags, args):
    if not args:
        die("Pull image: image name cannot be empty")
    if os.environ.get("STANDIN_OFFLINE"):
        rpc("pull", args, unreachable(args[0]))
    state["images"][args[0]] = new_id()
    print(f"Image is up to date for {args[0]}@sha256:{state['images'][args[0]]}")


def do_runp(state, flags, args):
    if not args:
        print("NAME:\n   crictl runp - Run a new pod")
        return
    config = json.loads(read_text(args[0]))
    handlers = os.environ.get("STANDIN_RUNTIMES", "runc,kata").split(",")
    handler = one(flags, "--runtime", "-r") or ""
    if (handler or "runc") not in handlers:
        die(f"run pod sandbox: rpc error: code = Unknown desc = failed to find runtime "
            f"handler {handler} from runtime list map[{' '.join(handlers)}]")
    meta = config.get("metadata", {})
    if os.environ.get("STANDIN_CNI") == "none":  # CRI-O waits for a CNI config
        rpc("runp", args, "context deadline exceeded", "DeadlineExceeded")
    if PAUSE not in state["images"]:
        if os.environ.get("STANDIN_OFFLINE"):
            name = "k8s_{}_{}_{}_{}".format(*(meta.get(k) for k in ("name", "namespace", "uid",
                                                                   "attempt")))
            rpc("runp", args, f"error creating pod sandbox with name \"{name}\": "
                + unreachable(PAUSE))
        state["images"][PAUSE] = new_id()
    key = [meta.get(k) for k in ("name", "namespace", "uid", "attempt")]
    for pod_id, pod in state["pods"].items():
        if pod["key"] == key:
            die(f"run pod sandbox: rpc error: code = Unknown desc = pod sandbox with name "
                f"\"{meta.get('name')}\" is already reserved for {pod_id}")
    pod_id = new_id()
    state["pods"][pod_id] = {"key": key, "state": "SANDBOX_READY", "handler": handler or "runc",
                             "config": config, "netns": token_hex(4) + "-netns",
                             "created": time.time()}
    print(pod_id)


def do_create(state, flags, args):
    if len(args) != 3:
        print("NAME:\n   crictl create - Create a new container\n\nUSAGE:\n   crictl create "
              "[command options] POD CONTAINER-CONFIG POD-CONFIG")
        return
    pod_id, ctr_file, _pod_file = args
    if pod_id not in state["pods"]:
        die(f"creating container: rpc error: code = NotFound desc = pod {pod_id} not found")
    config = json.loads(read_text(ctr_file))
    image = config.get("image", {}).get("image")
    if image not in state["images"]:
        die(f"creating container: rpc error: code = Unknown desc = image not known: {image}")
    ctr_id = new_id()
    state["containers"][ctr_id] = {"pod": pod_id, "state": "CONTAINER_CREATED",
                                   "config": config}
    print(ctr_id)


def do_start(state, flags, args):
    for ctr_id in args:
        if ctr_id not in state["containers"]:
            die(f"starting the container {ctr_id}: not found")
        ctr = state["containers"][ctr_id]
        ctr["state"] = "CONTAINER_RUNNING"
        logdir = state["pods"].get(ctr["pod"], {}).get("config", {}).get("log_directory")
        if logdir and ctr["config"].get("log_path"):
            with open(os.path.join(logdir, ctr["config"]["log_path"]), "a") as f:
                f.write(f"2024-05-02T10:11:12.000000000Z stdout F started {ctr_id[:13]}\n")
        print(ctr_id)


def do_exec(state, flags, args):
    ctr = state["containers"].get(args[0] if args else "")
    if not ctr or ctr["state"] != "CONTAINER_RUNNING":
        die("execing command in container: container is not created or running")
    if args[1:] == ["ip", "addr", "show"]:
        print("1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue qlen 1000\n"
              "    inet 127.0.0.1/8 scope host lo\n"
              "2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 65520 qdisc fq_codel qlen 1000\n"
              "    link/ether 00:11:22:33:44:55 brd ff:ff:ff:ff:ff:ff\n"
              "    inet 10.88.0.7/16 brd 10.88.255.255 scope global eth0")
    else:
        die(f"stand-in exec: unexpected command {args[1:]}")


def do_inspectp(state, flags, args):
    pod = state["pods"].get(args[0] if args else "")
    if pod is None:
        die(f"getting the pod sandbox status for {args[:1]}: not found")
    print(json.dumps({
        "status": {"id": args[0], "state": pod["state"],
                   "metadata": pod["config"].get("metadata"),
                   "linux": {"namespaces": {"options": {"network": "POD", "pid": "POD"}}},
                   "runtimeHandler": pod["handler"]},
        "info": {"image": "k8s.gcr.io/pause:3.6", "pid": 4242, "runtimeSpec": {
            "linux": {"namespaces": [
                {"type": "pid"},
                {"type": "ipc", "path": f"/var/run/ipcns/{pod['netns']}"},
                {"type": "network", "path": f"/var/run/netns/{pod['netns']}"}]}}},
    }, indent=2))


def do_inspect(state, flags, args):
    ctr = state["containers"].get(args[0] if args else "")
    if ctr is None:
        die(f"getting the status of the container {args[:1]}: not found")
    print(json.dumps({"status": {"id": args[0], "state": ctr["state"]}, "info": {}}))


def do_stopp(state, flags, args):
    for pod_id in args:  # CRI-O 1.23 answers OK for a pod it does not know
        if pod_id in state["pods"]:
            state["pods"][pod_id]["state"] = "SANDBOX_NOTREADY"
            for ctr in state["containers"].values():
                if ctr["pod"] == pod_id:
                    ctr["state"] = "CONTAINER_EXITED"
        print(f"Stopped sandbox {pod_id}")


def do_rmp(state, flags, args):
    for pod_id in args:
        pod = state["pods"].get(pod_id)
        if pod and pod["state"] == "SANDBOX_READY" and "-f" not in flags:
            die(f"removing the pod sandbox {pod_id}: pod sandbox is running, stop it first")
        state["pods"].pop(pod_id, None)
        for ctr_id in [c for c, v in state["containers"].items() if v["pod"] == pod_id]:
            del state["containers"][ctr_id]
        print(f"Removed sandbox {pod_id}")


def do_pods(state, flags, args):
    labels = dict(v.split("=", 1) for v in flags.get("--label", []) + flags.get("-l", []))
    for pod_id, pod in state["pods"].items():
        have = pod["config"].get("labels") or {}
        if all(have.get(k) == v for k, v in labels.items()):
            print(pod_id if "-q" in flags else f"{pod_id[:13]}\t{pod['state']}")


def do_ps(state, flags, args):
    for ctr_id, ctr in state["containers"].items():
        print(ctr_id if "-q" in flags else f"{ctr_id[:13]}\t{ctr['state']}\t{ctr['pod'][:13]}")


if __name__ == "__main__":
    main()
