//! The Go tools the suite runs (the Helm CLI, the health-verdict helper), built once from the
//! modules pinned under `tests/tools/` and cached (see `tests/tools/gotools.sh`).

use std::path::PathBuf;
use std::process::Command;

/// The cached binary of `tool` (`helm` or `health`), building it on first use.
pub fn go_tool(tool: &str) -> PathBuf {
    let out = Command::new("bash")
        .args(["tests/tools/gotools.sh", "path", tool])
        .output()
        .unwrap_or_else(|e| panic!("running tests/tools/gotools.sh: {e}"));
    assert!(
        out.status.success(),
        "building {tool} failed (needs Go >= 1.26, see tests/envtest/README.md):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(path.is_file(), "{} is not a file", path.display());
    path
}
