#!/usr/bin/env bash
# tests/t_env.sh - kmctl create --from-env: the environment convention
# (NUM_P, P_API_KEY_i, P_<PARAM>_i, P_RPM, P_RPM_i, P_WEIGHT_i,
# P_STRATEGY), warnings for gaps, errors naming variables, no segment left
# on failure, and no secret value ever printed.  Every kmctl runs under
# `env -i` so only the variables given exist.  TAP output (plan at the end).
# Binaries from ${KM_BUILD:-build}.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

begin env
new_seg SEG2 env2
new_seg BADSEG env-bad

S1="sk-envtest-aaaa1111"
S3="sk-envtest-cccc3333"
SA1="sk-ant-envtest-dddd4444"
SA2="sk-ant-envtest-eeee5555"
SADMIN="sk-admin-envtest-ffff6666"
SECRETS=("$S1" "$S3" "$SA1" "$SA2" "$SADMIN")
: >"$TMP/all" # every stdout and stderr, checked for secrets at the end
RUN_LOG="$TMP/all" # run appends everything here
# key_block ID: the lines of key ID's object in the snapshot JSON on stdin
key_block() { awk -v id="\"id\": \"$1\"" 'index($0, id) {p = 1; print; next}
    p && /"id": "/ {p = 0} p'; }
no_segment() { # no_segment NAME TESTNAME
    run "$KMCTL" inspect "$1"
    expect 3 "$2: no segment left behind"
}

# ------------------------------------------------------------- usage
run "$KMCTL" create "$SEG" --from-env openai --config /dev/null
expect 2 "--from-env with --config: usage error"
echo "$ERR" | grep -q '^kmctl: create: give either --config or --from-env'
ok $? "--from-env with --config: message"
run "$KMCTL" create "$SEG" --from-env
expect 2 "--from-env without PROVIDERS"
run "$KMCTL" create --help
echo "$OUT" | grep -q -- '--from-env PROVIDERS'
ok $? "create --help describes --from-env"

# ------------------------------------------------------------ one provider
run env -i PATH="$PATH" NUM_OPENAI=3 OPENAI_API_KEY_1="$S1" OPENAI_API_KEY_3="$S3" \
    OPENAI_ORG_1=org-one OPENAI_RPM=60 \
    "$KMCTL" create "$SEG" --from-env openai
expect 0 "create --from-env openai"
echo "$OUT" | grep -q "^created segment '$SEG': 1 pool, 2 keys, "
ok $? "success line: 1 pool, 2 keys"
echo "$ERR" | grep -q '^kmctl: create: warning: OPENAI_API_KEY_2 is not set; key 2 skipped$'
ok $? "warning names OPENAI_API_KEY_2"
[ "$(echo "$ERR" | grep -c .)" -eq 1 ]
ok $? "exactly one warning line"
no_secret "$OUT$ERR"
ok $? "create prints no secret"

run "$KMCTL" inspect "$SEG" --json
expect 0 "inspect --json"
JSON=$OUT
[ "$(echo "$JSON" | grep -c '"id": "openai-')" -eq 2 ] &&
    echo "$JSON" | grep -q '"id": "openai-1"' &&
    echo "$JSON" | grep -q '"id": "openai-3"'
ok $? "two keys: openai-1 and openai-3"
! echo "$JSON" | grep -q '"id": "openai-2"'
ok $? "no key openai-2"
echo "$JSON" | grep -q '"name": "openai"'
ok $? "pool named openai"
K1=$(echo "$JSON" | key_block openai-1)
K3=$(echo "$JSON" | key_block openai-3)
echo "$K1" | grep -q '"org": "org-one"'
ok $? "meta org on key openai-1"
! echo "$K3" | grep -q '"org"'
ok $? "no meta org on key openai-3"
echo "$K1" | grep -A1 '"rpm": {' | grep -q '"limit": 60,' &&
    echo "$K3" | grep -A1 '"rpm": {' | grep -q '"limit": 60,'
ok $? "rpm 60 on both keys"
echo "$K1" | grep -A3 '"rpm": {' | grep -q '"mode": "token_bucket"'
ok $? "env limits are token buckets"
no_secret "$JSON"
ok $? "inspect --json shows no secret"

run "$KMCTL" inspect "$SEG"
expect 0 "inspect"
echo "$OUT" | grep -q '^pool openai: round_robin, 2 keys' &&
    echo "$OUT" | grep -q ' META$' &&
    echo "$OUT" | grep -Eq '^  openai-1 .* 60/60 .*\{"org":"org-one"\}$' &&
    echo "$OUT" | grep -Eq '^  openai-3 .* 60/60 .* -$'
ok $? "inspect table: ids, rpm and META column"
no_secret "$OUT"
ok $? "inspect shows no secret"

run env -i PATH="$PATH" NUM_OPENAI=1 OPENAI_API_KEY_1="$S1" "$KMCTL" create "$SEG" --from-env openai
expect 1 "create --from-env on an existing name fails"
run "$KMCTL" destroy "$SEG"
expect 0 "destroy"

# ---------------------------------------- the single-key variable P_API_KEY
run env -i PATH="$PATH" OPENAI_API_KEY="$S1" OPENAI_RPM=60 "$KMCTL" create "$SEG" --from-env openai
expect 0 "create --from-env openai with OPENAI_API_KEY alone"
echo "$OUT" | grep -q "^created segment '$SEG': 1 pool, 1 key, " && [ -z "$ERR" ]
ok $? "OPENAI_API_KEY alone: a pool of one key, no warning"
run "$KMCTL" inspect "$SEG" --json
echo "$OUT" | grep -q '"id": "openai-1"' && [ "$(echo "$OUT" | grep -c '"id": "openai-')" -eq 1 ]
ok $? "OPENAI_API_KEY alone: the key is openai-1"
run "$KMCTL" destroy "$SEG"
expect 0 "destroy (single key)"
run env -i PATH="$PATH" OPENAI_API_KEY="$S3" NUM_OPENAI=1 OPENAI_API_KEY_1="$S1" \
    "$KMCTL" create "$SEG" --from-env openai
expect 0 "create --from-env with both NUM_OPENAI and OPENAI_API_KEY"
echo "$ERR" | grep -q '^kmctl: create: warning: OPENAI_API_KEY is ignored: NUM_OPENAI is set, so the keys are OPENAI_API_KEY_1..1$'
ok $? "both set: NUM_OPENAI wins, OPENAI_API_KEY warned about"
run "$KMCTL" destroy "$SEG"
expect 0 "destroy (both set)"

# -------------------------------------------------------------- failures
run env -i PATH="$PATH" OPENAI_API_KEY_1="$S1" "$KMCTL" create "$BADSEG" --from-env openai
expect 1 "missing NUM_OPENAI"
echo "$ERR" | grep -q '^kmctl: create: .*NUM_OPENAI is not set'
ok $? "missing NUM_OPENAI: message names NUM_OPENAI"
no_segment "$BADSEG" "missing NUM_OPENAI"

run env -i PATH="$PATH" NUM_OPENAI=many OPENAI_API_KEY_1="$S1" "$KMCTL" create "$BADSEG" --from-env openai
expect 1 "NUM_OPENAI not a number"
echo "$ERR" | grep -q 'NUM_OPENAI: must be an integer from 1 to 65536'
ok $? "NUM_OPENAI not a number: message"
no_segment "$BADSEG" "NUM_OPENAI not a number"

run env -i PATH="$PATH" NUM_OPENAI=2 "$KMCTL" create "$BADSEG" --from-env openai
expect 1 "no key set at all"
echo "$ERR" | grep -q 'openai: no key: none of OPENAI_API_KEY_1..2 is set' &&
    [ "$(echo "$ERR" | grep -c 'warning: OPENAI_API_KEY_[12] is not set')" -eq 2 ]
ok $? "no key: warnings for each, then the error"
no_segment "$BADSEG" "no key set"

run env -i PATH="$PATH" NUM_OPENAI=1 OPENAI_API_KEY_1="$S1" OPENAI_RPM=sixty \
    "$KMCTL" create "$BADSEG" --from-env openai
expect 1 "OPENAI_RPM not a number"
echo "$ERR" | grep -q 'OPENAI_RPM: must be a positive integer'
ok $? "OPENAI_RPM not a number: message names the variable"
no_segment "$BADSEG" "OPENAI_RPM not a number"

run env -i PATH="$PATH" NUM_OPENAI=1 OPENAI_API_KEY_1="$S1 x" \
    "$KMCTL" create "$BADSEG" --from-env openai
expect 1 "secret with a space"
echo "$ERR" | grep -q 'OPENAI_API_KEY_1: must be at most 255 bytes of printable ASCII'
ok $? "secret with a space: message names the variable"
no_segment "$BADSEG" "secret with a space"

run env -i PATH="$PATH" NUM_OPENAI=1 OPENAI_API_KEY_1="$S1" "$KMCTL" create "$BADSEG" --from-env openai,openai
expect 1 "duplicate provider"
echo "$ERR" | grep -q 'duplicate provider "openai"'
ok $? "duplicate provider: message"
no_segment "$BADSEG" "duplicate provider"

# ---------------------------------------------------------- two providers
run env -i PATH="$PATH" NUM_OPENAI=1 OPENAI_API_KEY_1="$S1" OPENAI_BASE_URL_1=https://api.openai.com/v1 \
    OPENAI_ADMIN_KEY_1="$SADMIN" \
    NUM_ANTHROPIC=2 ANTHROPIC_API_KEY_1="$SA1" ANTHROPIC_API_KEY_2="$SA2" \
    ANTHROPIC_TPM=40000 ANTHROPIC_RPM_2=5 ANTHROPIC_WEIGHT_2=3 ANTHROPIC_STRATEGY=weighted \
    ANTHROPIC_REGION_2=eu \
    "$KMCTL" create "$SEG2" --from-env openai,anthropic
expect 0 "create --from-env openai,anthropic"
echo "$OUT" | grep -q "^created segment '$SEG2': 2 pools, 3 keys, "
ok $? "two providers: 2 pools, 3 keys"
echo "$ERR" | grep -q '^kmctl: create: warning: OPENAI_ADMIN_KEY_1: may hold a credential; not used as metadata$'
ok $? "a credential-like parameter is warned about, not used"
run "$KMCTL" inspect "$SEG2" --json
expect 0 "inspect --json (two providers)"
JSON=$OUT
echo "$JSON" | grep -q '"name": "anthropic"' && echo "$JSON" | grep -q '"strategy": "weighted"'
ok $? "pool anthropic with ANTHROPIC_STRATEGY"
A2=$(echo "$JSON" | key_block anthropic-2)
echo "$A2" | grep -q '"weight": 3' && echo "$A2" | grep -q '"region": "eu"' &&
    echo "$A2" | grep -A1 '"rpm": {' | grep -q '"limit": 5,' &&
    echo "$A2" | grep -A1 '"tpm": {' | grep -q '"limit": 40000,'
ok $? "anthropic-2: weight, meta region, rpm 5 (own), tpm 40000 (pool)"
O1=$(echo "$JSON" | key_block openai-1)
echo "$O1" | grep -q '"base_url": "https://api.openai.com/v1"' && ! echo "$O1" | grep -q admin
ok $? "openai-1: meta base_url only"
run "$KMCTL" inspect "$SEG2"
expect 0 "inspect (two providers)"

# ---------------------------------------------------------------- secrets
for s in "${SECRETS[@]}"; do
    ! grep -qF -- "$s" "$TMP/all"
    ok $? "secret ${s%????????}... appears in no output"
done
# the last four characters may appear in masks; nothing longer
! grep -qF -- "envtest" "$TMP/all"
ok $? "no fragment of any secret (\"envtest\") in any output"

finish
