"""pip install ./bindings/python offline (Debian's setuptools, no build
isolation, no index) builds the extension; the installed package finds a
libkeymesh.so.0 on the loader's path, ships py.typed, and
`python3 -m keymesh --version` prints the versions."""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))


def build_dir():
    b = os.environ.get("KM_BUILD", "build")
    return b if os.path.isabs(b) else os.path.join(REPO, b)


def test_pip_install_offline_builds_the_extension(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(os.path.join(REPO, "bindings", "python"), src,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("KEYMESH_LIBRARY", "KM_BUILD", "PYTHONPATH", "KEYMESH_NO_EXT")}
    env["KEYMESH_INCLUDE"] = os.path.join(REPO, "include")
    env["KEYMESH_LIBDIR"] = build_dir()
    env["PIP_NO_INPUT"] = "1"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation",
                        "--no-index", "--no-deps", "--target", str(tmp_path / "site"), str(src)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    pkg = tmp_path / "site" / "keymesh"
    assert (pkg / "py.typed").exists()
    assert [p for p in os.listdir(pkg) if p.startswith("_ext.") and p.endswith(".so")]
    # As installed: the library comes from the loader's path (an installed
    # libkeymesh.so.0), not from the source tree.
    env2 = dict(env, PYTHONPATH=str(tmp_path / "site"), LD_LIBRARY_PATH=build_dir())
    r = subprocess.run([sys.executable, "-m", "keymesh", "--version"], capture_output=True,
                       text=True, env=env2, cwd=str(tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "keymesh-python 0.1.0"
    assert lines[1].startswith("libkeymesh 0.1.0 (") and "libkeymesh" in lines[1]
    assert lines[2] == "segment format 6"
    assert lines[3].startswith("hot path: keymesh._ext (%s" % pkg), lines[3]
    r = subprocess.run([sys.executable, "-c",
                        "import keymesh; p = keymesh.SyncKeyPool(keys=['sk-pkg-1111']);"
                        "k = p.acquire(); p.release(k); print(p.status()['pool_metrics']"
                        "['total_releases'], keymesh.implementation())"],
                       capture_output=True, text=True, env=env2, cwd=str(tmp_path), timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["1", "c-extension"], r.stderr


def test_version_command_in_tree():
    r = subprocess.run([sys.executable, "-m", "keymesh", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "segment format 6" in r.stdout
    r = subprocess.run([sys.executable, "-m", "keymesh"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr
