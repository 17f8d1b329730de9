'use strict';
// lib/errors.js - the binding's errors.
//
// KeyMeshError: a failure the C library reported.  `code` is the C code's
// name with its prefix ('KM_ENOENT', as keymesh.h spells it), `errno` the
// negative number (-4), as Node's own system errors carry both.  The message
// starts with the code and the library's text (km_strerror), then says what
// the binding was doing: "KM_ENOPOOL: no pool of that name: pool 'x' in
// segment 'llm'".  Never a secret.
//
// NoKeyAvailableError (a KeyMeshError): no key now or before the timeout:
// KM_EAGAIN (timeout 0), KM_ETIMEDOUT, or KM_EUNAVAIL (every key disabled,
// invalid or exhausted: nothing will come back without an operator).
// `retryAfterMs`: when KeyMesh knows the earliest time a key may be
// admissible (KM_EAGAIN, KM_ETIMEDOUT), else undefined.
//
// Errors of the binding itself carry Node-style codes: ERR_KEYMESH_CLOSED
// (a pool or segment used after close()), ERR_INVALID_ARG_TYPE (TypeError)
// and ERR_OUT_OF_RANGE (RangeError) for bad arguments.

class KeyMeshError extends Error {
  constructor(errno, message, props) {
    super(message);
    this.name = 'KeyMeshError';
    this.errno = errno;
    this.code = props && props.code !== undefined ? props.code : undefined;
    if (props) {
      for (const k of Object.keys(props)) if (k !== 'code') this[k] = props[k];
    }
  }
}

class NoKeyAvailableError extends KeyMeshError {
  constructor(errno, message, props) {
    super(errno, message, props);
    this.name = 'NoKeyAvailableError';
  }
}

function argType(name, want, got) {
  const e = new TypeError(`The "${name}" argument must be ${want}. Received ${describe(got)}`);
  e.code = 'ERR_INVALID_ARG_TYPE';
  return e;
}

function outOfRange(name, want, got) {
  const e = new RangeError(`The value of "${name}" is out of range. It must be ${want}. Received ${describe(got)}`);
  e.code = 'ERR_OUT_OF_RANGE';
  return e;
}

function describe(v) {
  if (v === null) return 'null';
  if (typeof v === 'string') return `type string ('${v.length > 28 ? v.slice(0, 25) + '...' : v}')`;
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return `${typeof v} (${String(v)})`;
  if (typeof v === 'function') return 'function';
  if (typeof v === 'object') return `an instance of ${v.constructor ? v.constructor.name : 'Object'}`;
  return `type ${typeof v}`;
}

function closedError(what) {
  const e = new KeyMeshError(0, `ERR_KEYMESH_CLOSED: ${what} is closed`, { code: 'ERR_KEYMESH_CLOSED' });
  return e;
}

module.exports = { KeyMeshError, NoKeyAvailableError, argType, outOfRange, closedError };
