#!/usr/bin/env bash
# Runs every check and test of the project, on a fresh machine too: it installs what the tests
# need (a Python venv with tests/requirements.txt: stomp.py for the STOMP system test, moto and
# cfn-lint for the AWS provisioning test) and fails on the first problem.
#
#   ./scripts/test.sh
#
# Steps: formatting, clippy (warnings are errors), the Python venv, cargo-nextest (installed from crates.io when
# missing), the workspace tests, doctests, and the fuzz crate's corpus replay on stable.
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

# tests/t40_stomp_py.rs drives the broker with Python's stomp.py from .venv (pinned in
# tests/requirements.txt). A fresh Debian/Ubuntu may lack python3 or its venv module (the
# python3-venv package, which brings ensurepip); install them only when missing.
step "python venv (.venv, tests/requirements.txt)"
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "python3 cannot create a venv here: installing python3 and python3-venv"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq python3 python3-venv
fi
if [ ! -x .venv/bin/pip ]; then
  rm -rf .venv
  python3 -m venv .venv
fi
# pip resolving ~60 pinned packages takes seconds even when all are there: skip it while the venv was
# built from exactly this requirements file (the stamp holds its checksum).
REQ_SUM="$(sha256sum tests/requirements.txt | cut -d' ' -f1)"
if [ "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$REQ_SUM" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
  echo "$REQ_SUM" > .venv/.requirements.sha256
else
  echo "(.venv matches tests/requirements.txt)"
fi

# The system tests that start, kill and time broker processes run one at a time through
# cargo-nextest's test groups (.config/nextest.toml); install it from crates.io when missing, pinned.
NEXTEST_VERSION=0.9.143
NEXTEST_FOUND="$(cargo nextest --version 2>/dev/null | head -n 1 || true)"
if [ "${NEXTEST_FOUND%% (*}" != "cargo-nextest $NEXTEST_VERSION" ]; then
  step "installing cargo-nextest $NEXTEST_VERSION (crates.io)"
  cargo install --locked cargo-nextest --version "$NEXTEST_VERSION"
fi

step "tests"
cargo nextest run --workspace --locked --no-fail-fast
step "doctests"
cargo test --workspace --locked --doc

step "fuzz properties on a replayed corpus (stable; the fuzzer itself needs nightly: fuzz/README.md)"
cargo test --manifest-path fuzz/Cargo.toml

step "all checks passed"
