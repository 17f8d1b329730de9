"""examples/python_basic.py and examples/python_httpx.py run as shown."""
import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def run(name):
    r = subprocess.run([sys.executable, os.path.join(REPO, "examples", name)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_python_basic():
    out = run("python_basic.py")
    assert "available now: 2" in out and "async: [" in out
    assert "sk-demo-aaaa1111" not in out


def test_python_httpx():
    out = run("python_httpx.py").splitlines()
    assert out[0] == "200 hi"
    assert out[1].startswith("key-1 ") and "cooling 429s: 1 ok: 0" in out[1]
    assert out[2].startswith("key-2 ") and "active 429s: 0 ok: 1" in out[2]
