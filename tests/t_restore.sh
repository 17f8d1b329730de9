#!/usr/bin/env bash
# tests/t_restore.sh - kmctl keygen / snapshot --include-secrets / restore,
# and permissions: files and segments 0600, --mode 0660 --group sharing a
# segment with a group, and a clear error for a process without access.
# The state round trip itself is checked field by field in t_restore.c.
# TAP output (plan at the end).  Binaries from ${KM_BUILD:-build}.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

begin restore
new_seg COPY restore-copy
new_seg SHARED restore-shared

SECRET_A="sk-rest-aaaa1111"
SECRET_B="sk-rest-bbbb2222"
SECRETS=("$SECRET_A" "$SECRET_B")
printf '%s\n' "$SECRET_B" >"$TMP/b.secret"

cat >"$TMP/pool.json" <<EOF
{"capacity": {"keys": 4, "processes": 8},
 "pools": [{"name": "p", "limits": {"rpm": 60},
            "keys": [{"id": "a", "secret": "$SECRET_A"},
                     {"id": "b", "secret_file": "$TMP/b.secret", "weight": 2}]}]}
EOF

run "$KMCTL" create "$SEG" --config "$TMP/pool.json"
expect 0 "create (one secret from secret_file)"

# ------------------------------------------------------------------ keygen
run "$KMCTL" keygen "$TMP/snap.key"
expect 0 "keygen"
ok $([ "$(stat -c %a "$TMP/snap.key")" = 600 ]; echo $?) "the key file is mode 0600"
ok $(grep -Eq '^[0-9a-f]{64}$' "$TMP/snap.key"; echo $?) "the key is 64 hex digits"
run "$KMCTL" keygen "$TMP/snap.key"
expect 1 "keygen never overwrites a file"

# -------------------------------------------------------- snapshot secrets
run "$KMCTL" snapshot "$SEG" --key-file "$TMP/snap.key"
expect 2 "--key-file without --include-secrets is a usage error"
run "$KMCTL" snapshot "$SEG" --include-secrets
expect 2 "--include-secrets without a key is a usage error"
run "$KMCTL" snapshot "$SEG" -o "$TMP/s.json" --include-secrets --key-file "$TMP/snap.key"
expect 0 "snapshot --include-secrets -o FILE"
ok $([ "$(stat -c %a "$TMP/s.json")" = 600 ]; echo $?) "the snapshot file is mode 0600"
no_secret "$(cat "$TMP/s.json")"
ok $? "no secret in clear in the file"
ok $([ "$(grep -c '"secret_enc"' "$TMP/s.json")" = 2 ]; echo $?) "both secrets are in it, encrypted"
KEYHEX=$(cat "$TMP/snap.key")
export KMT_SNAP_KEY="$KEYHEX"
run "$KMCTL" snapshot "$SEG" --include-secrets --key-env KMT_SNAP_KEY
expect 0 "snapshot --include-secrets --key-env to stdout"
no_secret "$OUT$ERR"
ok $? "... without a secret in clear"

# ------------------------------------------------------------------ restore
"$KMCTL" keygen "$TMP/other.key" >/dev/null
run "$KMCTL" restore "$COPY" "$TMP/s.json" --key-file "$TMP/other.key"
expect 1 "restore with the wrong key fails"
ok $(echo "$ERR" | grep -q "encrypted with another key"; echo $?) "... and says so"
no_secret "$OUT$ERR"
ok $? "... without a secret"
run "$KMCTL" inspect "$COPY"
expect 3 "... and leaves no segment"
"$KMCTL" snapshot "$SEG" -o "$TMP/masked.json"
run "$KMCTL" restore "$COPY" "$TMP/masked.json" --key-file "$TMP/snap.key"
expect 1 "a masked snapshot cannot be restored"
ok $(echo "$ERR" | grep -q -- "--include-secrets"; echo $?) "... and the message says how"
run "$KMCTL" restore "$COPY" "$TMP/s.json" --key-env KMT_SNAP_KEY
expect 0 "restore"
run "$KMCTL" inspect "$COPY"
ok $(echo "$OUT" | grep -Eq '^  a +sk-…1111 +active +1 ' && echo "$OUT" | grep -Eq '^  b +sk-…2222 +active +2 '; echo $?) \
    "the restored segment has both keys, with their weights"
run "$KMCTL" restore "$COPY" "$TMP/s.json" --key-file "$TMP/snap.key"
expect 1 "restore never replaces an existing segment"
run "$KMCTL" check "$COPY"
expect 0 "the restored segment passes check"

# -------------------------------------------------------------- permissions
ok $([ "$(stat -c %a "/dev/shm/$SEG")" = 600 ]; echo $?) "a segment is created 0600"
run setpriv --reuid=nobody --regid=nogroup --clear-groups "$KMCTL" inspect "$SEG"
expect 1 "a process without access cannot attach"
ok $(echo "$ERR" | grep -q "segment '$SEG': permission denied" &&
     echo "$ERR" | grep -q "is mode 0600, owner root" && echo "$ERR" | grep -q "needs"; echo $?) \
    "the error names the segment, its mode and owner, and what is missing"
run "$KMCTL" create "$SHARED" --config "$TMP/pool.json" --mode 0660 --group nogroup
expect 0 "create --mode 0660 --group nogroup"
ok $([ "$(stat -c '%a %G' "/dev/shm/$SHARED")" = "660 nogroup" ]; echo $?) "the segment is 0660, group nogroup"
run setpriv --reuid=nobody --regid=nogroup --clear-groups "$KMCTL" inspect "$SHARED"
expect 0 "a member of the group attaches"
run "$KMCTL" create kmt-restore-nogrp-$$ --config "$TMP/pool.json" --group no-such-group-kmt
expect 1 "an unknown group fails"
run "$KMCTL" inspect kmt-restore-nogrp-$$
expect 3 "... and leaves no segment"

finish
