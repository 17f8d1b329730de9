"""Build of keymesh._ext, the C extension of the binding (pyproject.toml
has the rest).  Where it looks, first found wins:

  keymesh.h       $KEYMESH_INCLUDE, the repository's include/ (when built
                  from the source tree), `pkg-config --cflags keymesh`,
                  /usr/local/include, /usr/include
  libkeymesh      $KEYMESH_LIBDIR, dirname($KEYMESH_LIBRARY), $KM_BUILD,
                  the repository's build/, `pkg-config --variable=libdir
                  keymesh`, /usr/local/lib, /usr/lib/<multiarch>, /usr/lib

The extension is linked against libkeymesh.so.0 when one is found (it is
recorded by soname, no rpath); at run time keymesh._lib loads the library
first by its own rules and the extension binds to that copy.  Without a
library at build time the extension is still built, its symbols resolved
at load from the copy keymesh._lib loaded.  KEYMESH_NO_EXT_BUILD=1 builds
the package without the extension (ctypes only).
"""
import os
import subprocess
import sysconfig

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))


def pkgconfig(*args):
    try:
        out = subprocess.run(["pkg-config"] + list(args) + ["keymesh"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def find_include():
    cands = [os.environ.get("KEYMESH_INCLUDE"), os.path.join(REPO, "include")]
    cands += [f[2:] for f in pkgconfig("--cflags-only-I").split() if f.startswith("-I")]
    cands += ["/usr/local/include", "/usr/include"]
    for d in filter(None, cands):
        if os.path.exists(os.path.join(d, "keymesh.h")):
            return d
    raise SystemExit("keymesh: keymesh.h not found (tried %s); set KEYMESH_INCLUDE, or "
                     "KEYMESH_NO_EXT_BUILD=1 for a ctypes-only package"
                     % ", ".join(filter(None, cands)))


def find_library():
    cands = [os.environ.get("KEYMESH_LIBDIR")]
    if os.environ.get("KEYMESH_LIBRARY"):
        cands.append(os.path.dirname(os.path.abspath(os.environ["KEYMESH_LIBRARY"])))
    b = os.environ.get("KM_BUILD")
    if b:
        cands += [b if os.path.isabs(b) else os.path.join(REPO, b)]
    cands += [os.path.join(REPO, "build"), pkgconfig("--variable=libdir"), "/usr/local/lib"]
    multi = sysconfig.get_config_var("MULTIARCH")
    if multi:
        cands.append("/usr/lib/" + multi)
    cands.append("/usr/lib")
    for d in filter(None, cands):
        p = os.path.join(d, "libkeymesh.so.0")
        if os.path.exists(p):
            return p
    return None


ext_modules = []
if os.environ.get("KEYMESH_NO_EXT_BUILD", "") in ("", "0"):
    lib = find_library()
    ext_modules.append(Extension(
        "keymesh._ext", sources=["keymesh/_ext.c"], include_dirs=[find_include()],
        extra_compile_args=["-std=c11", "-D_GNU_SOURCE", "-fvisibility=hidden"],
        extra_link_args=[lib] if lib else []))

setup(ext_modules=ext_modules)
