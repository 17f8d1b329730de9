// Type declarations of the keymesh package (bindings/node).  The comments
// are the API's documentation; lib/pool.js says how it works.

/** The options of an acquire. */
export interface AcquireOptions {
  /** Estimated tokens, charged to the key's token limits now and settled at
   * release (integer >= 0; default 0). */
  tokens?: number;
  /** Model name: a per_model pool applies that model's limits too
   * (KM_ENOMODEL if the pool does not know it). */
  model?: string;
  /** Only this key (KM_ENOKEY if the pool has no key of that id). */
  keyId?: string;
  /** A strategy for this acquire instead of the pool's: 'round_robin',
   * 'least_busy', 'weighted', 'latency', 'cost', 'reliability', 'fill_first'. */
  strategy?: string;
}

export interface WaitOptions extends AcquireOptions {
  /** Milliseconds to wait for a key (default: the pool's, 30000; 0: do not
   * wait; Infinity: no limit). */
  timeout?: number;
  /** Cancels the wait: the Promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** What the provider said, for release(). */
export interface Outcome {
  /** HTTP status of the provider's answer: mapped with its headers and
   * error body by km_outcome_from_http (429 + Retry-After cools the key,
   * 401/403 invalidate it, insufficient quota exhausts it, x-ratelimit-*
   * and anthropic-ratelimit-* tighten its windows). */
  status?: number;
  /** The answer's headers: fetch's Headers, http.IncomingMessage.headers, a
   * Map, [name, value] pairs or a flat [name, value, ...] array. */
  headers?: Headers | Record<string, string | string[] | undefined> | Map<string, string> |
    Array<[string, string]> | string[];
  /** The error body (text, bytes or a parsed object); read for errors only. */
  body?: string | Uint8Array | ArrayBuffer | object;
  /** An exception instead of an answer: an SDK error's status, headers and
   * error body are used; an AbortError counts as cancelled; anything else
   * as a failure. */
  error?: unknown;
  /** The outcome itself, when there is no HTTP answer to map. */
  outcome?: 'success' | 'rate_limited' | 'failure' | 'auth' | 'quota' | 'cancelled';
  /** Seconds of cooldown, with outcome 'rate_limited' (default: the pool's). */
  retryAfter?: number;
  /** Tokens actually used (default: the estimate stays charged). */
  tokens?: number;
  inputTokens?: number;
  outputTokens?: number;
  /** The SDK's usage object (OpenAI's prompt_tokens / completion_tokens /
   * total_tokens, Anthropic's input_tokens / output_tokens, Gemini's
   * usageMetadata): sets tokens, inputTokens and outputTokens. */
  usage?: Record<string, number | unknown>;
  /** Latency to record (default: measured from the acquire). */
  latencyMs?: number;
}

export interface PoolOptions {
  /** Default acquire timeout in milliseconds (30000). */
  timeout?: number;
  /** Threads that may sleep in km_acquire_wait for this pool at once (4,
   * at most 64); more waits queue behind them, first come first served. */
  maxWaiters?: number;
}

/** A key handed out.  Give it back once with pool.release() (or
 * lease.release()). */
export declare class Lease {
  private constructor();
  /** The key's id in the pool. */
  readonly keyId: string;
  /** The API key: put it in the request, nowhere else.  Never printed by
   * util.inspect or JSON.stringify. */
  readonly secret: string;
  /** The key's metadata (the config's "meta"), {} if none. */
  readonly meta: Readonly<Record<string, unknown>>;
  readonly metaText: string;
  readonly keyIndex: number;
  readonly model: string | undefined;
  /** Tokens reserved at acquire. */
  readonly tokens: number;
  readonly released: boolean;
  readonly pool: Pool;
  release(outcome?: Outcome): boolean;
  toJSON(): { keyId: string; model: string | undefined; tokens: number; released: boolean };
}

export interface LimitView { limit: number; burst: number; mode: 'token_bucket' | 'sliding'; available: number }

export interface KeyInfo {
  id: string;
  index: number;
  /** The secret masked ("sk-…abcd"), never the secret. */
  masked: string;
  state: 'active' | 'cooling' | 'probing' | 'disabled' | 'invalid' | 'exhausted';
  weight: number;
  inflight: number;
  maxInflight: number;
  cooldownMs: number;
  latencyEmaUs: number;
  successPpm: number;
  acquired: number;
  outcomes: Record<'success' | 'rate_limited' | 'failure' | 'auth' | 'quota' | 'cancelled' | 'abandoned' | 'stale', number>;
  tokensUsed: number;
  limits: Partial<Record<'rpm' | 'rph' | 'rpd' | 'tpm' | 'tph' | 'tpd', LimitView>>;
}

export interface PoolInfo {
  name: string; strategy: string; keys: number; models: number;
  /** Processes asleep in km_acquire_wait on this pool, all processes. */
  waiters: number;
  cooldownS: number; maxFailures: number; budgetMicroUsd: number; spentMicroUsd: number;
  /** The budget's period ("lifetime", "day", "week", "month") and its zone,
   * minutes east of UTC; spentMicroUsd counts from the period's start. */
  budgetPeriod: string; budgetTzMin: number;
  /** Spend of the period before the current one. */
  prevSpentMicroUsd: number;
  /** When spentMicroUsd resets, Unix ms; 0: no period. */
  periodEndUnixMs: number;
  /** Times the spend crossed a soft budget (once per period at most);
   * budgetOver 1 while the spend is at or over the budget. */
  budgetWarnings: number; budgetOver: number;
}

export declare class Pool {
  private constructor();
  /** Open pool `pool` of segment `segment` (attaching once per process and
   * segment; the last pool's close() detaches).  Throws KeyMeshError:
   * KM_ENOENT (no such segment), KM_ENOPOOL (no such pool), KM_EACCES, ... */
  static open(segment: string, pool: string, options?: PoolOptions): Pool;
  readonly name: string;
  readonly segment: Segment;
  readonly closed: boolean;
  /** A lease if a key is admissible now, else null.  Never waits, never
   * makes a system call in the steady state. */
  tryAcquire(options?: AcquireOptions): Lease | null;
  /** A lease now if a key is admissible (and no earlier acquire of this
   * pool waits), else when one is, without blocking the event loop.
   * Rejects with NoKeyAvailableError (KM_ETIMEDOUT, KM_EAGAIN for timeout
   * 0, KM_EUNAVAIL), KeyMeshError, or the signal's reason. */
  acquire(options?: WaitOptions): Promise<Lease>;
  /** Give a lease back with what happened (none: success).  false: the
   * library ignored it as stale (its key was removed and the row reused).
   * Throws KM_ESTALE if it was released already. */
  release(lease: Lease, outcome?: Outcome): boolean;
  /** acquire(), fn(lease), release: success when fn returns, {error} when
   * it throws, nothing more if fn released the lease itself. */
  use<T>(fn: (lease: Lease) => T | Promise<T>): Promise<T>;
  use<T>(options: WaitOptions, fn: (lease: Lease) => T | Promise<T>): Promise<T>;
  keys(): KeyInfo[];
  info(): PoolInfo;
  stats(): { leasesOut: number; waitThreads: number; idleThreads: number; queued: number; pending: number };
  /** Rejects the waits still pending (ERR_KEYMESH_CLOSED). */
  close(): void;
}

export declare class Segment {
  private constructor();
  /** Attach to segment `name` (a new attachment each call). */
  static open(name: string): Segment;
  /** Create segment `name` (mode 0600 unless given) from a configuration:
   * an object, JSON text, or a JSON file's path (docs/config.md), and
   * attach.  KM_EEXIST if it exists; KM_ECONFIG names the bad field. */
  static create(name: string, config: object | string, options?: { mode?: number }): Segment;
  readonly name: string;
  readonly closed: boolean;
  pool(name: string, options?: PoolOptions): Pool;
  info(): { format: number; capKeys: number; capPools: number; capProcs: number; capInflight: number;
    keys: number; pools: number; processes: number; sizeBytes: number; createdMs: number };
  /** Close its pools and detach: leases still out are released as abandoned. */
  close(): void;
}

/** Remove a segment's name; processes attached keep working. */
export declare function unlink(name: string): void;

export interface KeymeshFetchOptions {
  /** 'openai' (Authorization: Bearer, default), 'anthropic' (x-api-key),
   * 'gemini' / 'google' (x-goog-api-key), 'azure' (api-key), 'groq',
   * 'mistral', 'together', 'deepseek', 'openrouter', 'xai'. */
  provider?: string;
  /** The header instead of the provider's (Bearer scheme for authorization). */
  header?: string;
  scheme?: string;
  /** The fetch to wrap (default: globalThis.fetch). */
  fetch?: typeof fetch;
  /** Model and token estimate of each request: values, or functions of
   * (input, init). */
  model?: string | ((input: unknown, init?: RequestInit) => string | undefined);
  tokens?: number | ((input: unknown, init?: RequestInit) => number | undefined);
  keyId?: string;
  strategy?: string;
  /** Milliseconds to wait for a key (default: the pool's). */
  timeout?: number;
  /** After a 429, send once more on another key free now (default true). */
  retry429?: boolean;
}

/** A fetch() that leases a key per request: pass it as the `fetch` option
 * of the OpenAI, Anthropic (and most other) SDKs. */
export declare function keymeshFetch(pool: Pool, options?: KeymeshFetchOptions):
  (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

export declare class KeyMeshError extends Error {
  /** 'KM_ENOENT', ...; 'ERR_KEYMESH_CLOSED' for a closed pool or segment. */
  code: string;
  /** The C code (-4), 0 for the binding's own. */
  errno: number;
  segment?: string;
  pool?: string;
}
export declare class NoKeyAvailableError extends KeyMeshError {
  /** When a key may be admissible (KM_EAGAIN, KM_ETIMEDOUT), if known. */
  retryAfterMs?: number;
}

/** The C error codes by name: { EINVAL: -1, ..., EAGAIN: -15, ... }. */
export declare const codes: Readonly<Record<string, number>>;
export declare const strategies: readonly string[];
export declare const outcomes: readonly string[];
export declare const PROVIDER_HEADERS: Readonly<Record<string, readonly [string, string]>>;
/** The libkeymesh loaded and the addon. */
export declare const library: {
  readonly version: string; readonly versionNumber: number; readonly formatVersion: number;
  readonly headerVersionNumber: number; readonly path: string; readonly addon: string;
};
export declare const version: string;

declare const keymesh: {
  Pool: typeof Pool; Segment: typeof Segment; Lease: typeof Lease; KeyMeshError: typeof KeyMeshError;
  NoKeyAvailableError: typeof NoKeyAvailableError; keymeshFetch: typeof keymeshFetch; unlink: typeof unlink;
  codes: typeof codes; strategies: typeof strategies; outcomes: typeof outcomes;
  PROVIDER_HEADERS: typeof PROVIDER_HEADERS; library: typeof library; version: string;
};
export default keymesh;
