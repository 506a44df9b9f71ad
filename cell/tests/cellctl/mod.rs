//! The `cellctl` binary, run the way an operator runs it.
//!
//! It is another package's binary, so Cargo gives these tests no
//! `CARGO_BIN_EXE_cellctl`: it is looked up next to the test executable
//! (`cargo test --workspace`, as CI runs, builds it there; so does
//! `cargo build --bins`), or taken from `CELLCTL_BIN`.

use std::{path::PathBuf, process::Command};

use serde_json::Value;

pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CELLCTL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("cellctl"))
        .find(|p| p.is_file())
        .expect(
            "no `cellctl` binary next to the tests: run `cargo build --bins` \
             (or `cargo test --workspace`) first, or set CELLCTL_BIN",
        )
}

/// `cellctl --endpoint URL --token TOKEN --json ARGS...`: its JSON output
/// when it succeeds, else what it printed.
pub fn run(endpoint: &str, token: &str, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(bin())
        .args(["--endpoint", endpoint, "--token", token, "--json"])
        .args(args)
        .env_remove("CELLCTL_TOKEN_FILE")
        .output()
        .expect("cellctl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "cellctl {args:?} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_str(&stdout)
        .map_err(|e| format!("cellctl {args:?} printed no JSON ({e}): {stdout}"))
}
