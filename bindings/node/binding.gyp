# node-gyp build of the addon (npm install).  Only keymesh.h is needed at
# build time (libkeymesh is dlopen()ed at run time, see lib/native.js): it
# is taken from $KEYMESH_INCLUDE, else from the repository this package sits
# in (../../include), else the compiler's search path (make install puts it
# in $(PREFIX)/include).  Offline, against the installed headers:
#   node-gyp rebuild --nodedir=/usr
{
  "variables": {
    "km_include%": "<!(node -p \"process.env.KEYMESH_INCLUDE || require('path').resolve('../../include')\")"
  },
  "targets": [{
    "target_name": "keymesh",
    "sources": ["src/keymesh_node.c"],
    "include_dirs": ["<(km_include)"],
    "defines": ["_GNU_SOURCE"],
    "cflags_c": ["-std=c11", "-Wall", "-Wextra"],
    "libraries": ["-ldl", "-lpthread"]
  }]
}
