//! The workspace's executables, found in the target directory this test binary was built into.
//!
//! Cargo sets `CARGO_BIN_EXE_<name>` only for a package's own binaries; the programs under test
//! here belong to other packages. `cargo test --workspace` (the README's test command) builds
//! them beside the test binaries: a test executable lives in `<target>/<profile>/deps/`, the
//! programs in `<target>/<profile>/`.

use std::path::PathBuf;

/// The path of workspace executable `name` (e.g. `"tandem-node"`).
///
/// # Panics
/// When it has not been built, with the command that builds it.
pub fn path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable is in <target>/<profile>/deps");
    let p = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.is_file(),
        "{} is not built; run the tests with `./scripts/test.sh` (cargo test --workspace), which \
         builds every program, or build it with `cargo test --workspace --no-run`",
        p.display()
    );
    p
}
