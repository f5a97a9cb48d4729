//! `tandem-launch` as a process: it refuses dynamic-loader variables before touching a TPM.

use std::process::Command;

#[test]
fn loader_variables_are_refused_before_anything_is_measured() {
    for var in tandem_launch::REFUSED_ENV {
        let out = Command::new(env!("CARGO_BIN_EXE_tandem-launch"))
            .env_remove("LD_LIBRARY_PATH")
            .env(var, "/nonexistent/libevil.so")
            // A TCTI that reaches nothing: the refusal must come first.
            .args([
                "--tcti",
                "swtpm:host=127.0.0.1,port=1",
                "--node",
                "/bin/true",
            ])
            .args([
                "--config",
                "/nonexistent.toml",
                "--release",
                "/nonexistent.json",
            ])
            .output()
            .expect("run tandem-launch");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}: {stderr}");
        assert!(stderr.contains(&format!("{var} is set")), "{var}: {stderr}");
    }
}

#[test]
fn help_names_the_pcr() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-launch"))
        .arg("--help")
        .output()
        .expect("run tandem-launch");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("PCR 13"));
}
