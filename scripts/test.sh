#!/usr/bin/env bash
# Runs every check and test of the project, on a fresh machine too: it installs what the tests
# need (nothing beyond the Rust toolchain yet) and fails on the first problem.
#
#   ./scripts/test.sh
#
# Steps: formatting, clippy (warnings are errors), the workspace tests (cargo-nextest when it is
# installed, cargo test otherwise), doctests, and the fuzz crate's corpus replay on stable.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

# System tests start the real `tandem` binary: build it first so they find target/debug/tandem.
step "build"
cargo build --workspace --locked --bins --examples

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  step "doctests"
  cargo test --workspace --locked --doc
else
  echo "(cargo-nextest not installed: using cargo test)"
  cargo test --workspace --locked --no-fail-fast
fi

step "fuzz properties on a replayed corpus (stable; the fuzzer itself needs nightly: fuzz/README.md)"
cargo test --manifest-path fuzz/Cargo.toml

step "all checks passed"
