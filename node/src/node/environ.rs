//! The process environment a node starts with: what of it changes the node's behaviour, and the
//! start-up rule that keeps it inside the measurement.
//!
//! The release measures the executable, the config bytes and the model files (`measure`), but
//! the node and the libraries it links also read environment variables: candle (`CANDLE_*`,
//! `MISTRALRS_FORCE_*`, `RAYON_NUM_THREADS`), rayon (`RAYON_*`), tokio (`TOKIO_*`), the Rust
//! runtime (`RUST_*`: `RUST_MIN_STACK`, `RUST_BACKTRACE`, `RUST_LOG` for any logger), libtss2 and
//! tss-esapi (`TSS2_*`, `TCTI`, `TPM2TOOLS_TCTI`), reqwest/hyper-util for the log client (proxy
//! variables, `REQUEST_METHOD`), rustls (`SSLKEYLOGFILE`, `SSL_CERT_*`), tokenizers
//! (`TOKENIZERS_PARALLELISM`) and glibc's allocator (`MALLOC_*`, `GLIBC_TUNABLES`). The rule:
//!
//! 1. any `LD_*` variable (`LD_PRELOAD`, `LD_LIBRARY_PATH`, `LD_AUDIT`, …) → refuse to start:
//!    the dynamic loader has already run or searched for code the release does not measure;
//! 2. every other variable of [`is_behavioural`] present must be pinned, with the same value,
//!    in the config's `[environment]` table, and every pinned one must be present: the config is
//!    measured into the release, so the values a node runs with are the ones the verifier's
//!    release policy accepted. Anything else → refuse to start, naming the variable.
//!
//! The snapshot is taken at the top of `main`, before `tandem_model::default_thread_count`
//! sets `RAYON_NUM_THREADS` for the process itself. A process that already runs code of its own
//! choosing (a root user's `LD_PRELOAD` library can unset the variable before `main`) is
//! outside what this check can see; that is the measured-launch chain's job.

use std::collections::BTreeMap;
use std::ffi::OsString;

/// Exact names read by the node or its libraries (besides the prefixes in [`is_behavioural`]).
const NAMES: &[&str] = &[
    "GLIBC_TUNABLES",
    "TCTI",
    "TPM2TOOLS_TCTI",
    "TOKENIZERS_PARALLELISM",
    "SSLKEYLOGFILE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "REQUEST_METHOD",
];

/// Name prefixes read by the node or its libraries.
const PREFIXES: &[&str] = &[
    "CANDLE_",
    "MISTRALRS_",
    "RAYON_",
    "RUST_",
    "TOKIO_",
    "TSS2_",
    "MALLOC_",
];

/// Whether `name` is a dynamic-loader variable (refused whatever its value).
pub fn is_loader(name: &str) -> bool {
    name.starts_with("LD_")
}

/// Whether `name` changes what the node does (and so must be pinned by the config). Proxy
/// names are matched in any case, as reqwest reads both `HTTP_PROXY` and `http_proxy`.
pub fn is_behavioural(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    NAMES.contains(&upper.as_str()) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Why the environment stops the node from starting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// A dynamic-loader variable is set.
    #[error(
        "{name} is set: the dynamic loader runs or searches for code the release does not \
         measure, so the node refuses to start; unset {name} (no LD_* variable is allowed)"
    )]
    Loader {
        /// The variable.
        name: String,
    },
    /// A behaviour-changing variable is set but the config does not pin it.
    #[error(
        "{name} is set ({len} bytes) but the config's [environment] does not list it; it changes \
         what the node does, so the release must pin it: unset it, or add {name} = \"<its \
         value>\" to [environment] and make a new release"
    )]
    Unpinned {
        /// The variable.
        name: String,
        /// Length of its value (the value itself is not printed; it may hold a credential).
        len: usize,
    },
    /// A pinned variable has another value.
    #[error(
        "{name} is set to another value than the one the config's [environment] pins; set it \
         to the pinned value or make a new release with the new one"
    )]
    Differs {
        /// The variable.
        name: String,
    },
    /// A pinned variable is not set.
    #[error("the config's [environment] pins {name} but it is not set; set it to the pinned value")]
    Missing {
        /// The variable.
        name: String,
    },
    /// A name or value that matters is not UTF-8 (it cannot match the TOML config).
    #[error("{name} is set to a value that is not UTF-8; unset it")]
    NotUnicode {
        /// The variable (lossily decoded).
        name: String,
    },
}

/// The environment at the top of `main`: every variable, as the OS gave it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(Vec<(OsString, OsString)>);

impl Snapshot {
    /// This process's environment now (no thread needed; reads only).
    pub fn capture() -> Snapshot {
        Snapshot(std::env::vars_os().collect())
    }

    /// A snapshot of the given pairs (tests).
    pub fn from_pairs<K: Into<OsString>, V: Into<OsString>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Snapshot {
        Snapshot(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// Step 1 of the rule: no `LD_*` variable. Every command of the node runs it.
    pub fn refuse_loader_variables(&self) -> Result<(), EnvError> {
        match self
            .0
            .iter()
            .map(|(k, _)| k.to_string_lossy())
            .filter(|k| is_loader(k))
            .min()
        {
            Some(name) => Err(EnvError::Loader {
                name: name.into_owned(),
            }),
            None => Ok(()),
        }
    }

    /// The whole rule (module docs) against the config's `[environment]` table. Variables are
    /// checked in name order; the first failure is returned.
    pub fn check(&self, pinned: &BTreeMap<String, String>) -> Result<(), EnvError> {
        self.refuse_loader_variables()?;
        let mut present = BTreeMap::new();
        for (k, v) in &self.0 {
            let name = k.to_string_lossy();
            if !is_behavioural(&name) && !pinned.contains_key(name.as_ref()) {
                continue;
            }
            let (Some(name), Some(value)) = (k.to_str(), v.to_str()) else {
                return Err(EnvError::NotUnicode {
                    name: name.into_owned(),
                });
            };
            present.insert(name, value);
        }
        for (name, value) in &present {
            match pinned.get(*name) {
                None => {
                    return Err(EnvError::Unpinned {
                        name: (*name).to_owned(),
                        len: value.len(),
                    });
                }
                Some(p) if p != value => {
                    return Err(EnvError::Differs {
                        name: (*name).to_owned(),
                    });
                }
                Some(_) => {}
            }
        }
        match pinned.keys().find(|k| !present.contains_key(k.as_str())) {
            Some(name) => Err(EnvError::Missing { name: name.clone() }),
            None => Ok(()),
        }
    }
}

/// Removes from `cmd` every inherited variable a node would refuse or need pinned (loader and
/// behavioural ones), so a launcher (`tandem-fleet dev`, tests) starts nodes with the
/// environment an empty `[environment]` table expects.
pub fn scrub(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if is_loader(&name) || is_behavioural(&name) {
            cmd.env_remove(&k);
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pins(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// (environment, pinned, expected outcome).
    type Row = (
        Vec<(&'static str, &'static str)>,
        Vec<(&'static str, &'static str)>,
        Result<(), EnvError>,
    );

    /// Truth table of the rule, the empty cases included.
    #[test]
    fn the_rule_row_by_row() {
        let ok = Ok(());
        let rows: Vec<Row> = vec![
            (vec![], vec![], ok.clone()),
            (
                vec![("HOME", "/root"), ("PATH", "/bin")],
                vec![],
                ok.clone(),
            ),
            (
                vec![("LD_PRELOAD", "/x.so")],
                vec![("LD_PRELOAD", "/x.so")],
                Err(EnvError::Loader {
                    name: "LD_PRELOAD".into(),
                }),
            ),
            (
                vec![("LD_LIBRARY_PATH", "/opt")],
                vec![],
                Err(EnvError::Loader {
                    name: "LD_LIBRARY_PATH".into(),
                }),
            ),
            (
                vec![("RUST_LOG", "debug")],
                vec![],
                Err(EnvError::Unpinned {
                    name: "RUST_LOG".into(),
                    len: 5,
                }),
            ),
            (
                vec![("RUST_LOG", "debug")],
                vec![("RUST_LOG", "debug")],
                ok.clone(),
            ),
            (
                vec![("RAYON_NUM_THREADS", "1")],
                vec![("RAYON_NUM_THREADS", "2")],
                Err(EnvError::Differs {
                    name: "RAYON_NUM_THREADS".into(),
                }),
            ),
            (
                vec![],
                vec![("RAYON_NUM_THREADS", "2")],
                Err(EnvError::Missing {
                    name: "RAYON_NUM_THREADS".into(),
                }),
            ),
            (
                vec![("https_proxy", "http://p:3128")],
                vec![],
                Err(EnvError::Unpinned {
                    name: "https_proxy".into(),
                    len: 13,
                }),
            ),
            (
                vec![("CANDLE_DEQUANTIZE_ALL", "1")],
                vec![],
                Err(EnvError::Unpinned {
                    name: "CANDLE_DEQUANTIZE_ALL".into(),
                    len: 1,
                }),
            ),
            // A pinned name the node does not know is still held to its value.
            (vec![("FOO", "1")], vec![("FOO", "1")], ok.clone()),
            (
                vec![("FOO", "2")],
                vec![("FOO", "1")],
                Err(EnvError::Differs { name: "FOO".into() }),
            ),
        ];
        for (env, pinned, want) in rows {
            let got = Snapshot::from_pairs(env.clone()).check(&pins(&pinned));
            assert_eq!(got, want, "env {env:?}, pinned {pinned:?}");
        }
    }

    #[test]
    fn names_the_libraries_read_are_behavioural_and_others_are_not() {
        for n in [
            "RAYON_NUM_THREADS",
            "RUST_LOG",
            "RUST_BACKTRACE",
            "CANDLE_NUM_THREADS",
            "MISTRALRS_FORCE_AVX2",
            "TOKIO_WORKER_THREADS",
            "TSS2_LOG",
            "MALLOC_ARENA_MAX",
            "http_proxy",
            "NO_PROXY",
            "SSLKEYLOGFILE",
        ] {
            assert!(is_behavioural(n), "{n}");
        }
        for n in ["HOME", "PATH", "USER", "LANG", "TERM", "RUSTUP_HOME"] {
            assert!(!is_behavioural(n), "{n}");
        }
        assert!(is_loader("LD_AUDIT") && !is_loader("OLD_PWD"));
    }

    #[cfg(unix)]
    #[test]
    fn a_value_that_is_not_utf8_is_refused_not_mangled() {
        use std::os::unix::ffi::OsStringExt as _;
        let s = Snapshot::from_pairs([(
            OsString::from("RUST_LOG"),
            OsString::from_vec(vec![0xff, 0xfe]),
        )]);
        assert_eq!(
            s.check(&BTreeMap::new()),
            Err(EnvError::NotUnicode {
                name: "RUST_LOG".into()
            })
        );
    }
}
