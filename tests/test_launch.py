"""launch/tpu.sh against a fake `gcloud` that records its arguments (and can play a worker)."""
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

from conftest import REPO

SCRIPT = REPO / "launch" / "tpu.sh"

# Records each call as a JSON list; `describe --format=...state` answers ACTIVE; with
# FAKE_GCLOUD_EXEC=1 the command of `tpu-vm ssh` runs here, as on a (single) worker; scp
# keeps a copy of what it was asked to send; FAKE_GCLOUD_FAIL makes matching calls fail.
FAKE_GCLOUD = textwrap.dedent(f"""\
    #!{sys.executable}
    import json, os, shutil, subprocess, sys
    args = sys.argv[1:]
    with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
        f.write(json.dumps(args) + "\\n")
    if os.environ.get("FAKE_GCLOUD_FAIL") and os.environ["FAKE_GCLOUD_FAIL"] in " ".join(args):
        sys.exit(1)
    if "describe" in args and any(a.startswith("--format") for a in args):
        print("ACTIVE")
    if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
        shutil.copy(args[4], os.environ["FAKE_GCLOUD_LOG"] + ".tar.gz")
    if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and os.environ.get("FAKE_GCLOUD_EXEC"):
        command = next(a.split("=", 1)[1] for a in args if a.startswith("--command="))
        sys.exit(subprocess.run(["bash", "-c", command]).returncode)
    """)


@pytest.fixture
def gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_GCLOUD_LOG": str(log),
           "TPU_POLL_SECONDS": "0", "HOME": str(tmp_path / "home")}
    env.pop("TPU_ZONE", None)
    env.pop("TPU_PROJECT", None)

    def run(*args, check=True, **extra):
        result = subprocess.run(["bash", str(SCRIPT), *args], env={**env, **extra},
                                capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return result, calls

    run.log = log
    run.home = tmp_path / "home"
    return run


def test_scripts_parse():
    for script in (REPO / "launch").glob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_create_queues_a_v4_64_and_waits(gcloud):
    _, calls = gcloud("create", "muse", "--zone=us-central2-b", "--type=v4-64", "--project=p")
    assert calls[0] == ["compute", "tpus", "queued-resources", "create", "muse",
                        "--zone=us-central2-b", "--project=p", "--node-id=muse",
                        "--accelerator-type=v4-64", "--runtime-version=tpu-ubuntu2204-base"]
    assert calls[1][:4] == ["compute", "tpus", "queued-resources", "describe"]


def test_create_v5e_names_the_litepod_and_its_runtime(gcloud):
    _, calls = gcloud("create", "muse", "--zone=us-west4-a", "--type=v5e-256", "--spot", "--no-wait")
    assert calls == [["compute", "tpus", "queued-resources", "create", "muse", "--zone=us-west4-a",
                      "--node-id=muse", "--accelerator-type=v5litepod-256",
                      "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]]
    _, calls = gcloud("create", "muse", "--zone=z", "--type=v4-8", "--direct", "--version=rt")
    assert calls == [["compute", "tpus", "tpu-vm", "create", "muse", "--zone=z",
                      "--accelerator-type=v4-8", "--version=rt"]]


def test_bad_invocations_exit_2_with_one_line(gcloud):
    for args, message in [(("create", "muse", "--type=v4-8"), "--zone is required"),
                          (("create", "muse", "--zone=z"), "needs --type"),
                          (("create", "muse", "--zone=z", "--type=tpu9-8"), "no default runtime"),
                          (("run", "muse", "--zone=z"), "needs a command"),
                          (("logs", "muse", "--zone=z", "--bogus"), "unknown option --bogus")]:
        result, calls = gcloud(*args, check=False)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert not any(c[3] == "create" for c in calls if len(c) > 3)


def test_setup_ships_this_checkout_to_every_worker(gcloud):
    _, calls = gcloud("setup", "muse", "--zone=z")
    assert calls[0][:4] == ["compute", "tpus", "tpu-vm", "scp"]
    assert calls[0][5:] == ["muse:muse_jax.tar.gz", "--zone=z", "--worker=all"]
    with tarfile.open(str(gcloud.log) + ".tar.gz") as archive:
        names = set(archive.getnames())
    assert {"./setup.py", "./muse_jax/train.py", "./configs/base_256.py"} <= names
    assert not any(n.startswith("./.venv") or "__pycache__" in n for n in names)
    ssh = calls[1]
    assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "muse"] and "--worker=all" in ssh
    assert "pip install -q -e '.[tpu]'" in ssh[-1] and "python3.11 -m venv" in ssh[-1]


def test_run_starts_the_same_command_on_every_worker_then_stop(gcloud, tmp_path):
    # A fake worker: the checkout's venv puts a `python` first on PATH that records its argv.
    venv = gcloud.home / "muse_jax" / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "activate").write_text(f'PATH="{venv}:$PATH"\n')
    (venv / "python").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$HOME/argv"\nexec sleep 60\n')
    (venv / "python").chmod(0o755)
    workdir = "gs://bucket/base 256"  # a space and a $ must reach the worker intact
    _, calls = gcloud("run", "muse", "--zone=z", "--", "python", "-m", "muse_jax.train",
                      "--config=configs/base_256.py", f"--workdir={workdir}",
                      "--config.text.path=$HOME/t5", FAKE_GCLOUD_EXEC="1")
    assert calls[0][:6] == ["compute", "tpus", "tpu-vm", "ssh", "muse", "--zone=z"]
    assert "--worker=all" in calls[0]
    argv_file = gcloud.home / "argv"
    deadline = time.time() + 20
    while not argv_file.exists() or not argv_file.read_text().endswith("--distributed\n"):
        assert time.time() < deadline, "the worker never started the command"
        time.sleep(0.1)
    assert argv_file.read_text().splitlines() == [
        "-m", "muse_jax.train", "--config=configs/base_256.py", f"--workdir={workdir}",
        "--config.text.path=$HOME/t5", "--distributed"]
    pid = int((gcloud.home / "muse_jax" / "train.pid").read_text())
    os.kill(pid, 0)  # running

    result, _ = gcloud("run", "muse", "--zone=z", "--", "python", "-m", "muse_jax.train",
                       check=False, FAKE_GCLOUD_EXEC="1")
    assert result.returncode != 0 and "a run is going on" in result.stderr

    _, calls = gcloud("stop", "muse", "--zone=z", FAKE_GCLOUD_EXEC="1")
    deadline = time.time() + 20
    while _alive(pid):
        assert time.time() < deadline, "stop did not end the run"
        time.sleep(0.1)
    assert not (gcloud.home / "muse_jax" / "train.pid").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by init here) counts as ended
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_logs_follow_worker_0_and_delete_picks_the_kind(gcloud):
    _, calls = gcloud("logs", "muse", "--zone=z")
    assert "--worker=0" in calls[0] and "tail -n 200 -F ~/muse_jax/train.log" in calls[0][-1]
    _, calls = gcloud("delete", "muse", "--zone=z")
    assert calls[-1] == ["compute", "tpus", "queued-resources", "delete", "muse", "--zone=z",
                         "--force", "--quiet"]
    _, calls = gcloud("delete", "muse", "--zone=z", FAKE_GCLOUD_FAIL="queued-resources describe")
    assert calls[-1] == ["compute", "tpus", "tpu-vm", "delete", "muse", "--zone=z", "--quiet"]
