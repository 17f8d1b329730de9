"""Fixtures of the Python binding's pytest suite (tests/py), run by
tests/t_py.sh twice: with the C extension (KEYMESH_EXPECT_IMPL=c-extension)
and with KEYMESH_NO_EXT=1 (ctypes).  Each run checks that it really runs
the implementation it was asked for, so a missing extension fails the run
instead of passing it on ctypes twice.

Segments are named kmt-pyt-<pid>-<tag>, removed after each test.  The mock
provider listens on 127.0.0.1 on a free port, in a thread of this process.
"""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import keymesh  # noqa: E402
from keymesh import _lib as L  # noqa: E402

from mockprovider import MockProvider  # noqa: E402

SECRETS = ["sk-test-pyt-aaaa1111", "sk-test-pyt-bbbb2222", "sk-test-pyt-cccc3333",
           "sk-test-pyt-dddd4444", "sk-test-pyt-eeee5555", "sk-test-pyt-ffff6666"]


def pytest_report_header(config):
    return "keymesh: %s; libkeymesh %s at %s" % (
        keymesh.implementation_detail(), keymesh.library_version(), keymesh.library_path())


@pytest.fixture(scope="session", autouse=True)
def expected_implementation():
    want = os.environ.get("KEYMESH_EXPECT_IMPL")
    if want:
        assert keymesh.implementation() == want, keymesh.implementation_detail()
    return keymesh.implementation()


@pytest.fixture
def secrets():
    return list(SECRETS)


@pytest.fixture
def seg(request):
    made = []

    def name(tag="s"):
        n = "kmt-pyt-%d-%s-%d" % (os.getpid(), tag, len(made))
        made.append(n)
        L.lib.km_unlink(n.encode())
        return n
    yield name
    for n in made:
        L.lib.km_unlink(n.encode())


def cfg(keys, limits=None, strategy="round_robin", capacity=8, **pool):
    p = {"name": "p", "strategy": strategy,
         "keys": [{"id": "k%d" % (i + 1), "secret": s} for i, s in enumerate(keys)]}
    if limits:
        p["limits"] = limits
    p.update(pool)
    return {"capacity": {"keys": capacity, "processes": 16}, "pools": [p]}


@pytest.fixture
def provider():
    mp = MockProvider()
    mp.start()
    yield mp
    mp.stop()


@pytest.fixture
def kmctl():
    b = os.environ.get("KM_BUILD", "build")
    path = os.path.join(b, "kmctl")
    if not os.path.isabs(path):
        path = os.path.join(HERE, "..", "..", path)
    assert os.access(path, os.X_OK), "kmctl not built at %s" % path
    return path


def no_secret(text):
    return not any(s in text for s in SECRETS)
