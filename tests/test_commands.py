"""doit's own commands and options on this tool: each either works or says
in one line why not, never with a traceback.  Through the real doit."""

from __future__ import annotations

# --------------------------------------------------------------------------
# doit help TASK: what runs, and when it reruns


def test_help_says_what_runs_and_when_it_reruns(ab):
    expected = {
        "fetch:alpha": ["fetch alpha v1 from", "reruns when", "stack.lock moves the commit"],
        "patch:beta": ["apply 1 patch(es)", "reruns when the base commit"],
        "build:beta": ['runs make ALPHA="$DESTDIR$PREFIX/bin/alpha"', "reruns when",
                       "alpha is reinstalled with other content", "an artifact is missing"],
        "build:alpha": ["runs make;", "reruns when"],
        "install:alpha": ["runs make install", "reruns when", "an installed file"],
    }
    for task, fragments in expected.items():
        out = ab.doit("help", task).out
        for fragment in fragments:
            assert fragment in out, f"help {task}: no {fragment!r} in:\n{out}"
    # plain doit list keeps one short line per group (dodo.py's docstrings)
    listing = {line.split()[0]: line for line in ab.doit("list").out.splitlines()}
    for group in ("fetch", "patch", "build"):
        assert len(listing[group]) < 120 and "reruns" in listing[group], listing[group]


def test_help_on_image_and_config_says_when_they_rerun(kata):
    with open(kata.stack_file, "a") as f:
        f.write("configs:\n  crictl:\n    path: /etc/crictl.yaml\n    format: yaml\n"
                "    set: {timeout: 10}\n")
    image = kata.doit("help", "image", env=kata.tool_env).out
    assert "with mbuto -p kata" in image and "reruns when" in image
    assert "the image is missing" in image
    config = kata.doit("help", "config:crictl", env=kata.tool_env).out
    assert "write /etc/crictl.yaml" in config and "reruns when" in config
    assert "the file is missing" in config
