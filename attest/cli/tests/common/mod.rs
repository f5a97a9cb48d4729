//! Shared by the `attest` process tests: a server child process (`attest log serve`,
//! `attest witness serve`) that prints `listening on URL` on its first stdout line, killed when
//! dropped.
#![allow(dead_code, clippy::unwrap_used)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read as _};
use std::process::{Child, Command, Stdio};

/// The `attest` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_attest");

/// A running `attest … serve`.
pub struct Proc {
    pub child: Child,
    pub url: String,
}

impl Proc {
    /// Starts `attest ARGS` and waits for its `listening on URL` line; if it exits first, the
    /// error is what it wrote to stderr.
    pub fn try_start<I, S>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        match line.trim().strip_prefix("listening on ") {
            Some(url) => Ok(Self {
                url: url.to_owned(),
                child,
            }),
            None => {
                let out = child.wait_with_output().map_err(|e| e.to_string())?;
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        }
    }

    /// Like [`Proc::try_start`], panicking with the process's stderr if it does not start.
    pub fn start<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        Self::try_start(&args).unwrap_or_else(|e| panic!("attest {args:?} did not start: {e}"))
    }

    /// SIGKILL (no shutdown code runs), then what the process wrote to stderr.
    pub fn kill(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err).unwrap();
        }
        err
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
