/* tests/e2e/layout.c - prints "struct size field offset ..." for every public
 * struct the Python binding declares with ctypes; test_binding.py compares. */
#include <stddef.h>
#include <stdio.h>
#include "keymesh.h"

#define S(T) printf("\n%s %zu", #T, sizeof(T))
#define F(T, f) printf(" %s %zu", #f, offsetof(T, f))

int main(void)
{
    S(km_request); F(km_request, tokens); F(km_request, model); F(km_request, key_id);
    S(km_lease); F(km_lease, start_ns); F(km_lease, retry_at_ns); F(km_lease, secret_len);
    F(km_lease, key_id); F(km_lease, secret); F(km_lease, meta);
    S(km_outcome); F(km_outcome, latency_us); F(km_outcome, retry_after_s);
    F(km_outcome, view_flags); F(km_outcome, tokens_reset_ms); F(km_outcome, output_tokens);
    S(km_http_response); F(km_http_response, body_len); F(km_http_response, headers);
    F(km_http_response, now_unix_ms);
    S(km_info); F(km_info, size_bytes); F(km_info, created_wall_ns);
    S(km_limit_info); F(km_limit_info, mode); F(km_limit_info, available);
    S(km_pool_info); F(km_pool_info, strategy); F(km_pool_info, budget_microusd);
    F(km_pool_info, waiters);
    S(km_key_info); F(km_key_info, state); F(km_key_info, cooldown_until_ns);
    F(km_key_info, outcomes); F(km_key_info, limits); F(km_key_info, success_ppm);
    F(km_key_info, spent_microusd); F(km_key_info, meta);
    S(km_reap_report); F(km_reap_report, leases); F(km_reap_report, repaired);
    printf("\n");
    return 0;
}
