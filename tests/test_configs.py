"""Host configuration files: edited from real defaults with every comment kept,
image values flowing in, hand edits never lost, backups where no program
reads them.  End to end through doit, every file under the staged destdir."""

from __future__ import annotations

import difflib
import json
import os
import re
import stat
import subprocess
import tomllib

import pytest
import yaml
from conftest import FIXTURES, ROOT, text_in, write

from tasks.host.configs import docedit
from tasks.steps import configs

KATA_CONF = "/etc/kata-containers/configuration.toml"
KATA_BASE = "/usr/share/defaults/kata-containers/configuration-qemu.toml"
CRIO_DROPIN = "/etc/crio/crio.conf.d/50-kata-passt.conf"
CNI_CONF = "/etc/cni/net.d/50-kata-sandbox.conf"
WRAPPER = "/usr/local/libexec/kata-passt-stack/qemu-system-x86_64"
ALL_CONFIGS = ["config:crio", "config:cni", "config:crictl", "config:kata", "config:policy"]


def default_configs() -> dict:
    """The configs section of the real default stack.yaml, with its component
    names mapped onto the fixture's (kata-containers -> kata)."""
    data = yaml.safe_load((ROOT / "stack.yaml").read_text())
    out = data["configs"]
    for cfg in out.values():
        needs = [n.replace("kata-containers", "kata", 1) for n in cfg.get("needs", [])]
        cfg["needs"] = [n for n in needs if n.split("/")[0] in ("kata", "qemu", "image")]
    return out


def add_sections(project, configs_section=None, debug=None) -> None:
    sections = {"configs": configs_section or default_configs()}
    if debug is not None:
        sections["debug"] = debug
    with open(project.stack_file, "a") as f:
        f.write(yaml.safe_dump(sections, sort_keys=False))


def doit(project, *args, **kw):
    return project.doit(*args, env=project.tool_env, **kw)


def staged_toml(project, path=KATA_CONF) -> dict:
    return tomllib.loads(project.staged(path).read_text())


def backups(folder, name):
    return sorted(p.name for p in folder.glob(name + ".kps-*"))


# --------------------------------------------------------------------------
# End to end


def test_default_configs_written_with_image_values_and_comments_kept(kata):
    add_sections(kata)
    res = doit(kata)
    assert set(ALL_CONFIGS + ["image"]) <= set(res.ran), res.text
    assert res.ran.index("image") < res.ran.index("config:kata")

    kata_conf = kata.staged(KATA_CONF).read_text()
    conf = tomllib.loads(kata_conf)
    qemu = conf["hypervisor"]["qemu"]
    assert qemu["path"] == "/usr/local/bin/qemu-system-x86_64"
    assert qemu["kernel"] == "/boot/vmlinuz-5.10.0-test"
    assert qemu["initrd"] == os.path.realpath(kata.workdir / "kata.img")
    assert "image" not in qemu
    assert qemu["virtio_fs_daemon"] == "/usr/local/libexec/virtiofsd"  # built with qemu
    assert qemu["kernel_params"] == ""
    assert conf["runtime"]["internetworking_model"] == "passt"
    assert conf["agent"]["kata"]["debug_console_enabled"] is False
    base = (FIXTURES / "kata-2.4.0-alpha1-configuration-qemu.toml").read_text()
    assert _comments(base) == [c for c in _comments(kata_conf) if "unset by" not in c]

    crio = tomllib.loads(kata.staged(CRIO_DROPIN).read_text())
    assert crio == {"crio": {"runtime": {
        "cgroup_manager": "cgroupfs", "conmon_cgroup": "pod",
        "runtimes": {"kata": {
            "runtime_path": "/usr/local/bin/containerd-shim-kata-v2", "runtime_type": "vm",
            "runtime_root": "/run/vc", "runtime_config_path": KATA_CONF}}}}}
    cni = json.loads(kata.staged(CNI_CONF).read_text())
    assert cni["cniVersion"] == "0.4.0" and cni["type"] == "bridge"
    assert cni["ipam"] == {"type": "host-local", "subnet": "10.88.0.0/16",
                           "routes": [{"dst": "0.0.0.0/0"}]}
    crictl = yaml.safe_load(kata.staged("/etc/crictl.yaml").read_text())
    assert crictl == {"runtime-endpoint": "unix:///var/run/crio/crio.sock",
                      "image-endpoint": "unix:///var/run/crio/crio.sock", "timeout": 10}
    policy = json.loads(kata.staged("/etc/containers/policy.json").read_text())
    assert policy == {"default": [{"type": "insecureAcceptAnything"}]}
    assert stat.S_IMODE(kata.staged(KATA_CONF).stat().st_mode) == 0o644

    again = doit(kata)
    assert again.ran == []
    assert set(ALL_CONFIGS) <= set(again.uptodate)


def test_kernel_change_rebuilds_image_then_kata_config_only(kata):
    add_sections(kata)
    doit(kata)
    crio_before = kata.staged(CRIO_DROPIN).stat().st_mtime_ns
    kata.edit_stack("kernel: 5.10.0-test", "kernel: 5.15.0-test")
    res = doit(kata)
    assert res.ran == ["image", "config:kata"]
    assert staged_toml(kata)["hypervisor"]["qemu"]["kernel"] == "/boot/vmlinuz-5.15.0-test"
    assert kata.staged(CRIO_DROPIN).stat().st_mtime_ns == crio_before


def test_agent_change_rebuilds_the_image_not_the_unchanged_config(kata):
    add_sections(kata)
    doit(kata)
    before = kata.staged(KATA_CONF).read_bytes()
    kata.edit_stack("ref: v1", "ref: v2")  # kata v2 changes the agent only
    res = doit(kata)
    # The image is rebuilt; its kernel and initrd (what the Kata config says)
    # did not change, so the config is up to date.
    assert sorted(res.ran) == sorted(["fetch:kata", "patch:kata", "build:kata/runtime",
                                      "build:kata/agent", "install:kata/agent", "image"])
    assert "echo agent two" in text_in(kata, "/usr/bin/kata-agent")
    assert kata.staged(KATA_CONF).read_bytes() == before


def test_base_change_rewrites_the_config(kata):
    add_sections(kata)
    doit(kata)
    base = kata.staged(KATA_BASE)
    base.write_text(base.read_text() + "# a line the new default has\n")
    res = doit(kata)
    assert res.ran == ["config:kata"]
    assert kata.staged(KATA_CONF).read_text().endswith("# a line the new default has\n")


def test_hand_edit_is_refused_shown_and_kept_then_forced_with_a_backup(kata):
    add_sections(kata)
    doit(kata)
    conf = kata.staged(KATA_CONF)
    edited = conf.read_text().replace('internetworking_model="passt"',
                                      'internetworking_model="tcfilter"')
    conf.write_text(edited)
    assert doit(kata).ran == []  # nothing to write: the edit is simply kept
    assert conf.read_text() == edited

    kata.edit_stack("kernel: 5.10.0-test", "kernel: 5.15.0-test")
    res = doit(kata, expect=None)
    assert res.code != 0
    assert f"{conf} was edited by hand" in res.text
    assert '-internetworking_model="passt"' in res.text
    assert '+internetworking_model="tcfilter"' in res.text
    assert "configs.kata" in res.text and "doit config:kata force=1" in res.text
    assert conf.read_text() == edited  # nothing lost
    assert backups(conf.parent, conf.name) == []
    assert "image" in res.ran

    forced = doit(kata, "config:kata", "force=1")
    assert forced.ran == ["config:kata"]
    saved = backups(conf.parent, conf.name)
    assert len(saved) == 1 and saved[0].startswith("configuration.toml.kps-edit-")
    assert (conf.parent / saved[0]).read_text() == edited
    assert str(conf.parent / saved[0]) in forced.text  # says where
    now = tomllib.loads(conf.read_text())
    assert now["runtime"]["internetworking_model"] == "passt"
    assert now["hypervisor"]["qemu"]["kernel"] == "/boot/vmlinuz-5.15.0-test"
    assert doit(kata).ran == []


def test_backups_of_drop_ins_stay_out_of_the_folders_programs_read(kata):
    crictl = kata.staged("/etc/crictl.yaml")
    write(crictl, "runtime-endpoint: unix:///old.sock\n", mode=0o600)
    cni = kata.staged(CNI_CONF)
    write(cni, '{"cniVersion": "0.3.0", "name": "old"}\n')
    add_sections(kata)
    res = doit(kata)
    # Existing files are saved once before the first write.
    assert (crictl.parent / "crictl.yaml.kps-orig").read_text() == \
        "runtime-endpoint: unix:///old.sock\n"
    assert stat.S_IMODE(crictl.stat().st_mode) == 0o600  # the old file's mode is kept
    assert "crictl.yaml was there before" in res.text
    # CNI reads *.conf, *.conflist and *.json in net.d; CRI-O every file in
    # crio.conf.d: backups go to a sibling folder.
    assert os.listdir(cni.parent) == ["50-kata-sandbox.conf"]
    assert (cni.parent.with_name("net.d.kps-backup") / "50-kata-sandbox.conf.kps-orig"
            ).read_text() == '{"cniVersion": "0.3.0", "name": "old"}\n'

    kata.edit_stack("timeout: 10", "timeout: 20")
    assert doit(kata).ran == ["config:crictl"]
    assert backups(crictl.parent, "crictl.yaml") == ["crictl.yaml.kps-orig"]  # once

    dropin = kata.staged(CRIO_DROPIN)
    dropin.write_text(dropin.read_text() + "# mine\n")
    kata.edit_stack("runtime_root: /run/vc", "runtime_root: /run/vc2")
    assert doit(kata, expect=None).code != 0
    doit(kata, "config:crio", "force=1")
    assert os.listdir(dropin.parent) == ["50-kata-passt.conf"]
    saved = list(dropin.parent.with_name("crio.conf.d.kps-backup").iterdir())
    assert len(saved) == 1 and saved[0].read_text().endswith("# mine\n")


def test_create_only_leaves_an_existing_file_alone(kata):
    policy = kata.staged("/etc/containers/policy.json")
    write(policy, '{"default": [{"type": "reject"}]}\n')
    add_sections(kata)
    res = doit(kata)
    assert "config:policy" in res.ran
    assert policy.read_text() == '{"default": [{"type": "reject"}]}\n'
    assert backups(policy.parent, "policy.json") == []
    policy.unlink()
    assert doit(kata).ran == ["config:policy"]
    assert json.loads(policy.read_text()) == {"default": [{"type": "insecureAcceptAnything"}]}


@pytest.mark.parametrize("value, message", [
    ({"hypervisor": {"qemu": {"path": {"nested": 1}}}},
     "config 'kata': hypervisor.qemu.path: the base has a string "
     '("/usr/bin/qemu-system-x86_64") here; stack.yaml asks for a table'),
    ({"runtime": "passt"},
     'config \'kata\': runtime: the base has a table here; stack.yaml asks for a string ("passt")'),
    ({"hypervisor": {"qemu": {"default_memory": "4G"}}},
     "hypervisor.qemu.default_memory: the base has an integer (2048) here; stack.yaml asks "
     'for a string ("4G")'),
])
def test_bad_values_are_reported_and_nothing_is_written(kata, value, message):
    section = default_configs()
    section["kata"]["set"] = value
    add_sections(kata, section)
    res = doit(kata, expect=None)
    assert res.code != 0
    assert message in res.text
    assert "nothing was written" in res.text
    assert not kata.staged(KATA_CONF).exists()


def test_unset_of_a_missing_key_is_a_note(kata):
    section = default_configs()
    section["kata"]["unset"] = ["hypervisor.qemu.image", "hypervisor.qemu.nothere"]
    add_sections(kata, section)
    res = doit(kata)
    assert "unset hypervisor.qemu.nothere: not there, nothing to do" in res.text


def test_unknown_variable_is_an_error_before_anything_runs(kata):
    section = default_configs()
    section["kata"]["set"]["hypervisor"]["qemu"]["kernel"] = "${image.kernal}"
    add_sections(kata, section)
    res = doit(kata, expect=None)
    assert res.code != 0 and res.ran == []
    assert "configs.kata.set.hypervisor.qemu.kernel: unknown variable ${image.kernal}" in res.text


def test_debug_switches_write_the_wrapper_and_the_kata_keys(kata, tmp_path):
    add_sections(kata, debug={"qemu_log": True, "agent_debug_console": True})
    res = doit(kata)
    assert res.ran.index("config:qemu-wrapper") < res.ran.index("config:kata")
    qemu = staged_toml(kata)["hypervisor"]["qemu"]
    assert qemu["path"] == WRAPPER
    assert qemu["kernel_params"] == "console=ttyS0"
    assert staged_toml(kata)["agent"]["kata"]["debug_console_enabled"] is True
    wrapper = kata.staged(WRAPPER)
    assert os.access(wrapper, os.X_OK)
    text = wrapper.read_text()
    assert "exec /usr/local/bin/qemu-system-x86_64 " in text

    # Run it, with a stand-in for the real QEMU in its place.
    fake = write(tmp_path / "fake-qemu", '#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\n'
                                         'echo "qemu: oops" >&2\n', mode=0o755)
    runnable = write(tmp_path / "wrapper", text.replace("/usr/local/bin/qemu-system-x86_64",
                                                        str(fake)), mode=0o755)
    subprocess.run([str(runnable), "-m", "2048"], check=True)
    logs = kata.workdir / "logs"
    assert (tmp_path / "args").read_text() == f"-m 2048 -serial file:{logs}/qemu-serial.log\n"
    assert (logs / "qemu-stderr.log").read_text() == "qemu: oops\n"

    # Back off: Kata runs QEMU itself again.
    kata.edit_stack("qemu_log: true", "qemu_log: false")
    res = doit(kata)
    assert res.ran == ["config:kata"]
    qemu = staged_toml(kata)["hypervisor"]["qemu"]
    assert qemu["path"] == "/usr/local/bin/qemu-system-x86_64" and qemu["kernel_params"] == ""


# --------------------------------------------------------------------------
# Editing the real default files (tests/fixtures: produced by the real programs)


class FixedValues:
    def __init__(self, **values):
        self.values = {k.replace("_", ".", 1): v for k, v in values.items()}

    def get(self, name):
        return self.values[name]


def _comments(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("#")]


def _changes(before: str, after: str) -> tuple[list[str], list[str]]:
    a, b = before.splitlines(), after.splitlines()
    removed, added = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += a[i1:i2]
            added += b[j1:j2]
    return removed, added


def _managed(line: str, keys) -> bool:
    return bool(re.match(r"^#?\s*(" + "|".join(keys) + r")\s*=", line))


def test_real_kata_default_only_managed_lines_change():
    base = (FIXTURES / "kata-2.4.0-alpha1-configuration-qemu.toml").read_text()
    cfg = default_configs()["kata"]
    values = configs.substitute(cfg["set"], FixedValues(
        image_kernel="/boot/vmlinuz-6.1.0-18-amd64", image_initrd="/var/lib/kps/kata.img",
        qemu_path="/usr/local/bin/qemu-system-x86_64",
        detect_virtiofsd="/usr/lib/qemu/virtiofsd", debug_kernel_params="console=ttyS0",
        debug_agent_debug_console=True))
    text, notes = docedit.render("toml", base, values, cfg["unset"])
    assert notes == []
    removed, added = _changes(base, text)
    keys = ["path", "kernel", "initrd", "image", "virtio_fs_daemon", "kernel_params",
            "internetworking_model", "debug_console_enabled"]
    assert removed and all(_managed(line, keys) for line in removed), removed
    assert added and all(_managed(line, keys) for line in added), added
    assert len(removed) == 6 and len(added) == 8  # 2 keys added, image commented out
    assert _comments(base) == [c for c in _comments(text) if "unset by" not in c]
    assert '#image = "/usr/share/kata-containers/kata-containers.img"' in text
    conf = tomllib.loads(text)
    qemu = conf["hypervisor"]["qemu"]
    assert qemu["kernel"] == "/boot/vmlinuz-6.1.0-18-amd64"
    assert qemu["initrd"] == "/var/lib/kps/kata.img" and "image" not in qemu
    assert qemu["virtio_fs_daemon"] == "/usr/lib/qemu/virtiofsd"
    assert qemu["kernel_params"] == "console=ttyS0"
    assert conf["runtime"]["internetworking_model"] == "passt"
    assert conf["agent"]["kata"]["debug_console_enabled"] is True
    # Everything else reads as it did.
    original = tomllib.loads(base)
    for table in ("factory", "image"):
        assert conf[table] == original[table]
    assert conf["runtime"]["disable_guest_seccomp"] is True
    assert qemu["default_memory"] == original["hypervisor"]["qemu"]["default_memory"]
    # The new keys sit where a reader looks for them.
    lines = text.splitlines()
    assert lines[lines.index("#debug_console_enabled = true") + 1] == \
        "debug_console_enabled = true"
    assert lines.index('initrd = "/var/lib/kps/kata.img"') == \
        lines.index('kernel = "/boot/vmlinuz-6.1.0-18-amd64"') + 1


def test_real_crio_default_only_managed_lines_change():
    base = (FIXTURES / "crio-1.23.5-default.conf").read_text()
    values = default_configs()["crio"]["set"]
    text, _ = docedit.render("toml", base, values, ())
    removed, added = _changes(base, text)
    keys = ["cgroup_manager", "conmon_cgroup", "runtime_path", "runtime_type", "runtime_root",
            "runtime_config_path"]
    assert sorted(removed) == ['cgroup_manager = "systemd"', 'conmon_cgroup = "system.slice"']
    assert all(_managed(line, keys) or line in ("", "[crio.runtime.runtimes.kata]")
               for line in added), added
    assert _comments(base) == _comments(text)
    conf, original = tomllib.loads(text), tomllib.loads(base)
    runtime = conf["crio"]["runtime"]
    assert runtime["cgroup_manager"] == "cgroupfs" and runtime["conmon_cgroup"] == "pod"
    assert runtime["runtimes"]["runc"] == original["crio"]["runtime"]["runtimes"]["runc"]
    assert runtime["runtimes"]["kata"]["runtime_type"] == "vm"
    for table in ("api", "image", "network", "metrics", "tracing", "stats"):
        assert conf["crio"][table] == original["crio"][table]
    # The new runtime table follows runc's keys, before the comment block that
    # introduces the next tables.
    lines = text.splitlines()
    assert lines.index("[crio.runtime.runtimes.kata]") < lines.index(
        "# crun is a fast and lightweight fully featured OCI runtime and C library for")


def test_an_edit_that_changes_nothing_keeps_the_file_byte_for_byte():
    base = (FIXTURES / "kata-2.4.0-alpha1-configuration-qemu.toml").read_text()
    text, _ = docedit.render("toml", base, {"runtime": {"internetworking_model": "tcfilter"}})
    assert text == base


def test_without_root_every_write_goes_through_sudo(tmp_path, monkeypatch):
    """What a user who is not root gets with destdir "": the writes and the
    backup run through sudo (a stand-in that logs and runs the command)."""
    from tasks.spec import load_stack
    from tasks.workspace import Workspace

    log = tmp_path / "sudo.log"
    write(tmp_path / "bin/sudo", f"""\
        #!/bin/sh
        echo "$*" >> {log}
        while [ "${{1#-}}" != "$1" ]; do
            if [ "$1" = "--" ]; then shift; break; fi
            shift
        done
        exec "$@"
        """, mode=0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    write(tmp_path / "stack.yaml", "version: 1\ncomponents:\n  a: {git: /nowhere, ref: v1}\n")
    ws = Workspace(load_stack(tmp_path / "stack.yaml"))
    monkeypatch.setattr(ws, "needs_sudo", lambda: True)

    target = write(tmp_path / "etc/crictl.yaml", "old: 1\n", mode=0o640)
    configs.install_text(ws, "config:crictl", "crictl", target, "new: 1\n")
    assert target.read_text() == "new: 1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert (tmp_path / "etc/crictl.yaml.kps-orig").read_text() == "old: 1\n"
    fresh = tmp_path / "etc/cni/net.d/50-x.conf"
    configs.install_text(ws, "config:cni", "cni", fresh, "{}\n")
    assert fresh.read_text() == "{}\n" and stat.S_IMODE(fresh.stat().st_mode) == 0o644
    calls = log.read_text()
    assert "cp -p -- " in calls and calls.count("install -D -m ") == 2
    assert f"-o {os.getuid()} -g {os.getgid()}" in calls  # the old file's owner kept
    assert os.listdir(fresh.parent) == ["50-x.conf"]
    assert not list((ws.state / "configs").glob("*.upload"))


# --------------------------------------------------------------------------
# One rule for run-time paths (host/runtime.py): check and config:kata agree


def without_qemu(kata) -> None:
    """The kata fixture without its qemu component (and configs that do not
    need it): QEMU and virtiofsd must come from the host."""
    text = kata.stack_file.read_text()
    start, end = text.index("  qemu:\n"), text.index("  mbuto:\n")
    kata.stack_file.write_text(text[:start] + text[end:])
    cfgs = default_configs()
    for cfg in cfgs.values():
        cfg["needs"] = [n for n in cfg["needs"] if n != "qemu"]
    add_sections(kata, cfgs)
    with open(kata.stack_file, "a") as f:
        f.write("pod: {}\n")


def host_file(root, path, mode=0o755):
    return write(root / path.lstrip("/"), "#!/bin/sh\n", mode=mode)


def test_a_host_virtiofsd_counts_for_check_and_config_alike(kata, tmp_path):
    without_qemu(kata)
    root = tmp_path / "hostroot"
    host_file(root, "/usr/lib/qemu/virtiofsd")
    env = {**kata.tool_env, "KPS_CHECK_ROOT": str(root)}
    res = kata.doit("-a", "check", env=env, expect=None)
    line = next(li for li in res.text.splitlines() if li.split()[1:2] == ["virtiofsd"])
    assert line.split()[0] == "ok" and "/usr/lib/qemu/virtiofsd" in line
    kata.doit(env=env)
    qemu = staged_toml(kata)["hypervisor"]["qemu"]
    assert qemu["virtio_fs_daemon"] == "/usr/lib/qemu/virtiofsd"  # the path on the target


def test_no_virtiofsd_anywhere_fails_config_kata_naming_both_places(kata, tmp_path):
    without_qemu(kata)
    root = tmp_path / "hostroot"
    root.mkdir()
    res = kata.doit(env={**kata.tool_env, "KPS_CHECK_ROOT": str(root)}, expect=None)
    assert res.code != 0
    assert "no executable virtiofsd found" in res.text
    assert str(kata.staged("/usr/lib/qemu/virtiofsd")) in res.text
    assert str(root / "usr/lib/qemu/virtiofsd") in res.text


def test_a_qemu_nothing_installs_gets_a_warning(kata, tmp_path):
    without_qemu(kata)
    root = tmp_path / "hostroot"
    host_file(root, "/usr/libexec/virtiofsd")
    res = kata.doit(env={**kata.tool_env, "KPS_CHECK_ROOT": str(root)})
    assert staged_toml(kata)["hypervisor"]["qemu"]["path"] == "/usr/local/bin/qemu-system-x86_64"
    assert "warning: ${qemu.path} is /usr/local/bin/qemu-system-x86_64, which is not on the " \
           "target system" in res.err
    assert "nothing in the stack installs it" in res.err
    # The kernel mbuto named is not on this host either: said too.
    assert "warning: ${image.kernel} is /boot/vmlinuz-5.10.0-test" in res.err


def test_the_distributions_qemu_is_used_when_the_stack_builds_none(kata, tmp_path):
    without_qemu(kata)
    root = tmp_path / "hostroot"
    host_file(root, "/usr/libexec/virtiofsd")
    host_file(root, "/usr/bin/qemu-system-x86_64")
    host_file(root, "/boot/vmlinuz-5.10.0-test", mode=0o644)
    res = kata.doit(env={**kata.tool_env, "KPS_CHECK_ROOT": str(root)})
    assert staged_toml(kata)["hypervisor"]["qemu"]["path"] == "/usr/bin/qemu-system-x86_64"
    assert "warning:" not in res.err


def test_the_stacks_own_qemu_needs_no_warning(kata):
    add_sections(kata)
    res = doit(kata)
    assert "${qemu.path}" not in res.err  # installed by the qemu component
