// ES module entry: the same objects as index.js.
import km from './index.js';

export const {
  Pool, Segment, Lease, KeyMeshError, NoKeyAvailableError, keymeshFetch, unlink, codes,
  strategies, outcomes, PROVIDER_HEADERS, library, version,
} = km;
export default km;
