//! The transparency log of the local fleet: the `attest log serve` server itself (C2SP
//! tlog-tiles read API, `POST /add`, proof endpoints; durable store with group commit), compiled
//! into this crate from its source in `attest/src/bin/attest/log/` so the dev fleet runs the
//! exact code an operator runs, in-process, without needing the `attest` binary built.

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../../../attest/src/bin/attest/log/store.rs"]
pub mod store;

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../../../attest/src/bin/attest/log/server.rs"]
pub mod server;
