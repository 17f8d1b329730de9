/* tests/e2e/layout.c - prints one line per public struct the bindings declare,
 * "struct size field offset field offset ...", with every field, as the C
 * compiler lays them out.  test_binding.py checks the Python ctypes structs
 * against it and tests/e2e/lua_layout.lua the LuaJIT ffi.cdef ones; a field
 * added to keymesh.h and not here still shows as a changed size. */
#include <stddef.h>
#include <stdio.h>
#include "keymesh.h"

#define S(T) printf("\n%s %zu", #T, sizeof(T))
#define F(T, f) printf(" %s %zu", #f, offsetof(T, f))

int main(void)
{
    S(km_request); F(km_request, pool); F(km_request, strategy); F(km_request, tokens);
    F(km_request, model); F(km_request, key_id); F(km_request, reserved);
    S(km_lease); F(km_lease, key); F(km_lease, key_gen); F(km_lease, slot); F(km_lease, seq);
    F(km_lease, pool); F(km_lease, tokens); F(km_lease, start_ns); F(km_lease, retry_at_ns);
    F(km_lease, secret_len); F(km_lease, model); F(km_lease, meta_len); F(km_lease, key_id);
    F(km_lease, secret); F(km_lease, meta); F(km_lease, reserved);
    S(km_outcome); F(km_outcome, kind); F(km_outcome, latency_us); F(km_outcome, tokens);
    F(km_outcome, retry_after_s); F(km_outcome, view_flags); F(km_outcome, requests_remaining);
    F(km_outcome, tokens_remaining); F(km_outcome, requests_reset_ms);
    F(km_outcome, tokens_reset_ms); F(km_outcome, input_tokens); F(km_outcome, output_tokens);
    F(km_outcome, reserved);
    S(km_http_response); F(km_http_response, status); F(km_http_response, error_code);
    F(km_http_response, body); F(km_http_response, body_len); F(km_http_response, headers);
    F(km_http_response, n_headers); F(km_http_response, now_unix_ms); F(km_http_response, reserved);
    S(km_info); F(km_info, format); F(km_info, cap_keys); F(km_info, cap_pools);
    F(km_info, cap_procs); F(km_info, cap_inflight); F(km_info, n_keys); F(km_info, n_pools);
    F(km_info, n_procs); F(km_info, size_bytes); F(km_info, created_wall_ns); F(km_info, reserved);
    S(km_limit_info); F(km_limit_info, limit); F(km_limit_info, burst); F(km_limit_info, mode);
    F(km_limit_info, reserved0);
    F(km_limit_info, available); F(km_limit_info, tat_ns); F(km_limit_info, reserved);
    S(km_pool_info); F(km_pool_info, name); F(km_pool_info, strategy); F(km_pool_info, n_keys);
    F(km_pool_info, cooldown_s); F(km_pool_info, max_cooldown_s); F(km_pool_info, max_failures);
    F(km_pool_info, model_mode); F(km_pool_info, n_models); F(km_pool_info, budget_microusd);
    F(km_pool_info, budget_hard); F(km_pool_info, spent_microusd); F(km_pool_info, waiters);
    F(km_pool_info, reserved);
    S(km_key_info); F(km_key_info, id); F(km_key_info, secret_masked); F(km_key_info, pool);
    F(km_key_info, weight); F(km_key_info, gen); F(km_key_info, state);
    F(km_key_info, cooldown_until_ns); F(km_key_info, inflight); F(km_key_info, max_inflight);
    F(km_key_info, consecutive_failures); F(km_key_info, consecutive_429s);
    F(km_key_info, latency_ema_us); F(km_key_info, acquired); F(km_key_info, outcomes);
    F(km_key_info, abandoned); F(km_key_info, stale_releases); F(km_key_info, tokens_used);
    F(km_key_info, limits); F(km_key_info, success_ppm); F(km_key_info, price_in_microusd_per_1k);
    F(km_key_info, price_out_microusd_per_1k); F(km_key_info, budget_microusd);
    F(km_key_info, budget_hard); F(km_key_info, spent_microusd); F(km_key_info, meta);
    F(km_key_info, reserved);
    S(km_reap_report); F(km_reap_report, processes); F(km_reap_report, leases);
    F(km_reap_report, recounted); F(km_reap_report, pending); F(km_reap_report, repaired);
    F(km_reap_report, reserved);
    S(km_window_stats); F(km_window_stats, limit); F(km_window_stats, burst);
    F(km_window_stats, mode); F(km_window_stats, period_s); F(km_window_stats, used);
    F(km_window_stats, left); F(km_window_stats, full_in_ms);
    S(km_stats_counters); F(km_stats_counters, requests); F(km_stats_counters, outcomes);
    F(km_stats_counters, abandoned); F(km_stats_counters, stale_releases);
    F(km_stats_counters, tokens);
    S(km_key_stats); F(km_key_stats, size); F(km_key_stats, key); F(km_key_stats, gen);
    F(km_key_stats, pool); F(km_key_stats, id); F(km_key_stats, state); F(km_key_stats, weight);
    F(km_key_stats, taken_ns); F(km_key_stats, cooldown_remaining_ms);
    F(km_key_stats, inflight); F(km_key_stats, max_inflight);
    F(km_key_stats, consecutive_failures); F(km_key_stats, consecutive_429s);
    F(km_key_stats, latency_ema_us); F(km_key_stats, success_ppm); F(km_key_stats, n_models);
    F(km_key_stats, counters); F(km_key_stats, windows); F(km_key_stats, spent_microusd);
    F(km_key_stats, budget_microusd); F(km_key_stats, budget_hard); F(km_key_stats, reserved0);
    F(km_key_stats, price_in_microusd_per_1k); F(km_key_stats, price_out_microusd_per_1k);
    S(km_pool_stats); F(km_pool_stats, size); F(km_pool_stats, pool); F(km_pool_stats, name);
    F(km_pool_stats, strategy); F(km_pool_stats, model_mode); F(km_pool_stats, taken_ns);
    F(km_pool_stats, n_keys); F(km_pool_stats, keys_by_state); F(km_pool_stats, inflight);
    F(km_pool_stats, max_inflight); F(km_pool_stats, waiters); F(km_pool_stats, n_models);
    F(km_pool_stats, counters); F(km_pool_stats, latency_ema_us); F(km_pool_stats, success_ppm);
    F(km_pool_stats, reserved0); F(km_pool_stats, windows); F(km_pool_stats, keys_limited);
    F(km_pool_stats, spent_microusd); F(km_pool_stats, budget_microusd);
    F(km_pool_stats, budget_hard); F(km_pool_stats, reserved1);
    S(km_model_stats); F(km_model_stats, size); F(km_model_stats, pool); F(km_model_stats, model);
    F(km_model_stats, key); F(km_model_stats, name); F(km_model_stats, taken_ns);
    F(km_model_stats, n_keys); F(km_model_stats, counters_valid); F(km_model_stats, counters);
    F(km_model_stats, windows); F(km_model_stats, keys_limited);
    printf("\n");
    return 0;
}
