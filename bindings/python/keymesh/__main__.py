"""python3 -m keymesh --version: the binding, library and segment-format
versions, and which implementation of the hot path runs."""
import sys

import keymesh


def main(argv: list) -> int:
    if argv[1:] in (["--version"], ["-V"]):
        print("keymesh-python %s" % keymesh.__version__)
        print("libkeymesh %s (%s)" % (keymesh.library_version(), keymesh.library_path()))
        print("segment format %d" % keymesh.format_version())
        print("hot path: %s" % keymesh.implementation_detail())
        return 0
    print("usage: python3 -m keymesh --version", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
