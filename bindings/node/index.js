'use strict';
// keymesh for Node.js: API keys shared by every worker process of a host
// (cluster, PM2), through libkeymesh's shared-memory segment.  See
// README.md (this package's and the repository's "Node.js" section) and
// index.d.ts.

const { load } = require('./lib/native');
const { Segment, Pool, Lease, unlink, codes, STRATEGIES, OUTCOMES } = require('./lib/pool');
const { KeyMeshError, NoKeyAvailableError } = require('./lib/errors');
const { keymeshFetch, PROVIDER_HEADERS } = require('./lib/fetch');

const { info } = load();

module.exports = {
  Pool,
  Segment,
  Lease,
  KeyMeshError,
  NoKeyAvailableError,
  keymeshFetch,
  unlink,
  codes,
  strategies: STRATEGIES,
  outcomes: OUTCOMES,
  PROVIDER_HEADERS,
  /** The libkeymesh loaded: version, versionNumber, formatVersion, path, addon. */
  library: info,
  version: require('./package.json').version,
};
