"""doit's own commands and options on this tool: each either works or says
in one line why not, never with a traceback.  Through the real doit."""

from __future__ import annotations

import pytest


def one_error(res) -> str:
    """The error line doit printed (and its Hint), checked for tracebacks."""
    assert "Traceback" not in res.text, res.text
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("ERROR: "), res.text
    return "\n".join(lines)


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


# --------------------------------------------------------------------------
# KPS_PROGRESS_INTERVAL


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_a_bad_progress_interval_is_refused_at_start(ab, value):
    res = ab.doit(env={"KPS_PROGRESS_INTERVAL": value}, expect=3)
    text = one_error(res)
    assert text.splitlines()[0] == (f"ERROR: KPS_PROGRESS_INTERVAL={value!r}: expected a number "
                                    "of seconds above 0 (default 60)")
    assert text.splitlines()[1].startswith("Hint: ")
    assert res.ran == [] and not ab.workdir.exists()  # refused before anything ran


@pytest.mark.parametrize("value", ["0.5", "120", ""])  # empty: as if unset
def test_a_good_progress_interval_is_taken(ab, value):
    res = ab.doit("build:alpha", env={"KPS_PROGRESS_INTERVAL": value})
    assert "build:alpha" in res.ran


# --------------------------------------------------------------------------
# doit info


def test_info_on_an_unknown_task_says_so_in_a_line(ab):
    res = ab.doit("info", "nosuch:task", expect=3)
    text = one_error(res)
    assert "no task 'nosuch:task'" in text
    assert "Hint: doit list --all" in text
    assert len(text.splitlines()) == 2  # the line and its hint


def test_info_on_a_mistyped_task_names_the_closest(ab):
    res = ab.doit("info", "build:alpah", expect=3)
    assert "did you mean 'build:alpha'?" in one_error(res)
