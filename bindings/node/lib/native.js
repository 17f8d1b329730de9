'use strict';
// lib/native.js - finds and loads the native addon (keymesh.node) and the
// libkeymesh it drives.  First match wins.
//
// The addon (the Node-API module, src/keymesh_node.c):
//   1. $KEYMESH_NODE_ADDON: a path to keymesh.node;
//   2. build/Release/keymesh.node in this package (npm install / node-gyp);
//   3. $KM_BUILD/node/keymesh.node: a KeyMesh build directory (relative
//      paths are tried from the current directory, then the repository);
//   4. build/node/keymesh.node of the repository this package sits in
//      (bindings/node -> ../../build), i.e. after `make`.
// The library, as the Python and LuaJIT bindings find it:
//   1. $KEYMESH_LIBRARY; 2. $KM_BUILD/libkeymesh.so.0; 3. the repository's
//   build/libkeymesh.so.0; 4. the soname libkeymesh.so.0 through the
//   dynamic linker's search (an installed library, `make install`).
//
// The addon checks at load that every struct it passes has the size
// km_struct_size() gives in that library, and refuses it otherwise.

const fs = require('node:fs');
const path = require('node:path');

const PKG = path.resolve(__dirname, '..');
const REPO = path.resolve(PKG, '..', '..');

function buildDirs() {
  const b = process.env.KM_BUILD;
  if (!b) return [];
  return path.isAbsolute(b) ? [b] : [path.resolve(b), path.resolve(REPO, b)];
}

function findAddon() {
  const tried = [];
  const cands = [];
  if (process.env.KEYMESH_NODE_ADDON) return { file: process.env.KEYMESH_NODE_ADDON, tried };
  cands.push(path.join(PKG, 'build', 'Release', 'keymesh.node'));
  for (const d of buildDirs()) cands.push(path.join(d, 'node', 'keymesh.node'));
  cands.push(path.join(REPO, 'build', 'node', 'keymesh.node'));
  for (const f of cands) {
    tried.push(f);
    if (fs.existsSync(f)) return { file: f, tried };
  }
  return { file: null, tried };
}

function findLibrary() {
  if (process.env.KEYMESH_LIBRARY) return process.env.KEYMESH_LIBRARY;
  for (const d of buildDirs()) {
    const f = path.join(d, 'libkeymesh.so.0');
    if (fs.existsSync(f)) return f;
  }
  const f = path.join(REPO, 'build', 'libkeymesh.so.0');
  if (fs.existsSync(f)) return f;
  return 'libkeymesh.so.0';
}

let native = null;
let info = null;

// load() -> {N, info}; throws an Error saying what is missing.
function load() {
  if (native) return { N: native, info };
  const a = findAddon();
  if (!a.file) {
    const e = new Error('keymesh: the native addon keymesh.node is not built (tried ' +
      a.tried.join(', ') + '): run `make` in the KeyMesh repository, or ' +
      '`npm install` (node-gyp) in bindings/node');
    e.code = 'ERR_KEYMESH_NO_ADDON';
    throw e;
  }
  const N = require(a.file);
  const lib = findLibrary();
  const r = N.load(lib);
  if (typeof r === 'string') {
    const e = new Error('keymesh: ' + r);
    e.code = 'ERR_KEYMESH_LIBRARY';
    throw e;
  }
  info = Object.freeze({ ...r, addon: a.file });
  native = N;
  return { N, info };
}

module.exports = { load, findAddon, findLibrary };
