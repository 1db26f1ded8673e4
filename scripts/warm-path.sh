#!/usr/bin/env bash
# Instructions per request of the warm path, in-process (no network, no
# hyper, no timers): deterministic, for comparing changes. See
# bench/src/bin/warm-path.rs and BENCHMARKS.md.
#
#   scripts/warm-path.sh            bare, bare-headers, authgate, authgate-sealed,
#                                   each with the session cookie alone, with
#                                   a browser's three-cookie header (+3c), and
#                                   bare/authgate with ten cookies (+10c)
#   scripts/warm-path.sh authgate   one variant
#
# Leaves callgrind.warm-path.VARIANT.{1000,11000}.out in bench/results/last-run/
# for callgrind_annotate.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/bench/results/last-run"
mkdir -p "$OUT"
command -v valgrind >/dev/null || {
    echo "warm-path.sh: valgrind is missing (apt-get install -y valgrind)" >&2
    exit 1
}
cargo build --release --quiet --manifest-path "$ROOT/bench/Cargo.toml" --bin warm-path
BIN="$ROOT/bench/target/release/warm-path"
variants=("$@")
((${#variants[@]})) || variants=(bare bare-headers authgate authgate-sealed bare+3c bare-headers+3c authgate+3c authgate-sealed+3c bare+10c authgate+10c)
declare -A per
for v in "${variants[@]}"; do
    declare -A ir
    for k in 1000 11000; do
        file="$OUT/callgrind.warm-path.$v.$k.out"
        valgrind --tool=callgrind --callgrind-out-file="$file" "$BIN" "$v" "$k" 2>/dev/null
        ir[$k]=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$file" | tail -1)
    done
    per[$v]=$(((ir[11000] - ir[1000]) / 10000))
    printf '%-19s %6d instructions/request' "$v" "${per[$v]}"
    base=bare
    [[ "$v" == *+3c ]] && base=bare+3c
    [[ "$v" == *+10c ]] && base=bare+10c
    [[ -n "${per[$base]:-}" && "$v" != "$base" ]] && printf '   (%+d vs %s)' $((per[$v] - per[$base])) "$base"
    printf '\n'
done
