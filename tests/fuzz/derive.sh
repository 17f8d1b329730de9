#!/bin/sh
# tests/fuzz/derive.sh - inputs derived from the seed segments by changing
# single fields (tests/fuzz/segedit.py): harness-knob variants of the seeds,
# regression inputs (tests/fuzz/attach/regress-*), and the reproducers of
# the K bugs (tests/fuzz/known/attach/; all fixed since, so each is also
# copied into attach/ as regress-<name>).  Run by `make fuzz-seeds` after
# mkseeds, so they follow layout changes: segedit.py computes every offset
# from this tree's headers and refuses a seed of another format or layout.
set -e
A=tests/fuzz/attach
K=tests/fuzz/known/attach
E="python3 tests/fuzz/segedit.py"
mkdir -p $K
# knob variants (hdr.pad1, see fuzz_attach.c): outcome rate_limited with the
# provider's view, tokens 16, strategy least_busy, set-weight
$E $A/seg-used $A/seg-used-knobs hdr.pad1=$(( (1<<14) | (1<<27) | (16<<4) | 2 | (1<<29) ))
# model given, pinned key, failure outcome, remove the key
$E $A/seg-models $A/seg-models-knobs hdr.pad1=$(( (1<<12) | (1<<13) | (2<<14) | (2<<29) | (8<<4) ))
# no reap at attach; set-limits; weighted strategy
$E $A/seg-dead-admitting $A/seg-dead-admitting-knobs hdr.pad0=1 hdr.pad1=$(( 3 | (3<<29) ))
# in-flight flags that are not 0 or 1, set on free slots, and set in the
# row's padding past cap_inflight (100 slots, 128-byte rows) and past g1's
# max_inflight (90); no reap, so they reach km_key_info_get as written;
# least_busy (counts the flags)
$E $A/seg-wide $A/seg-wide-flags hdr.pad0=1 hdr.pad1=2 \
   busy.0.89=0xff busy.0.90=1 busy.0.99=0x80 busy.0.100=1 busy.0.127=0xff \
   busy.1.98=2 busy.1.99=1 busy.1.104=1

# regression inputs (bugs fixed in the files of this work)
# check.c printed a key id with "%s": an id without its NUL ran on into the
# secret (key 0 disabled so no lease copies the id: that is K3)
$E $A/seg-fresh $A/regress-check-id-unterminated key.0.id=fill:0x41 key.0.state=3 lease.0.0.phase=1

# reproducers of the K bugs (README.md, "Findings")
$E $A/seg-fresh $K/k1-max-inflight key.0.max_inflight=5000
$E $A/seg-fresh $K/k2-secret-len key.0.secret_len=4096 key.1.secret_len=4096
$E $A/seg-fresh $K/k3-id-unterminated key.0.id=fill:0x41 key.1.id=fill:0x41
$E $A/seg-fresh $K/k4-emission-zero key.0.emission_ns0=0
$E $A/seg-fresh $K/k5-member-key member.0.0.0.key=0x7fffffff
$E $A/seg-fresh $K/k6-remove-key-pool key.0.pool=100000 hdr.pad1=$((2 << 29))
# K6 as the fuzzer found it (a corpus entry of format 2, no longer
# replayable): key 0's pool 33 in a one-pool segment, so the pool's
# address is just past the segment and its guard page; its knobs (model,
# pinned key, remove the key)
$E $A/seg-models $K/k6-write-outside key.0.pool=33 hdr.pad1=0x4000b080
# pool 0 cooldown_s 0, consecutive 429s near 2^32, release with a 429
$E $A/seg-fresh $K/k8-backoff-spin pool.0.cooldown_s=0 key.0.consec_429=0xfffffff0 \
   key.1.consec_429=0xfffffff0 hdr.pad1=$((1 << 14))
$E $A/seg-models $K/k9-model-name-unterminated pool.0.model0_name=fill:0x41
# a latency EMA at or above 2^63, then a successful release
$E $A/seg-fresh $K/k11-latency-ema key.0.latency_ema_ns=0x8000000000000100 \
   key.1.latency_ema_ns=0x8000000000000100

# fixed: the reproducers are regression inputs of the corpus
for f in $K/*; do
  cp "$f" "$A/regress-${f##*/}"
done
