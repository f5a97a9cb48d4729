//! Local-first routing: the pure decision, with a human-readable reason for every outcome.
//!
//! Local when the request names the device model, its adapter is installed on the device, and
//! prompt tokens + requested new tokens fit the local budget; otherwise remote. Callers can force
//! either route; a forced route that cannot work is an error, never a silent change of route.

use std::fmt;
use std::str::FromStr;

use crate::models::ModelChoice;

/// What the caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteChoice {
    /// Let the router decide (local first).
    #[default]
    Auto,
    /// Only on the device.
    Local,
    /// Only on a verified node.
    Remote,
}

impl FromStr for RouteChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(RouteChoice::Auto),
            "local" => Ok(RouteChoice::Local),
            "remote" => Ok(RouteChoice::Remote),
            _ => Err(format!(
                "unknown route `{s}`: expected auto, local or remote"
            )),
        }
    }
}

/// Where a request ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On the device.
    Local,
    /// On a verified node.
    Remote,
}

impl Route {
    /// `"local"` or `"remote"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::Remote => "remote",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A routing decision and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The route.
    pub route: Route,
    /// Why, in words.
    pub reason: String,
}

/// Everything the decision depends on.
#[derive(Debug, Clone)]
pub struct RouteInputs<'a> {
    /// What the caller asked for.
    pub choice: RouteChoice,
    /// The model the request names.
    pub model: ModelChoice,
    /// The adapter the request names.
    pub adapter: Option<&'a str>,
    /// Whether that adapter is installed on the device (true when no adapter is named).
    pub adapter_installed: bool,
    /// Prompt length in the device model's tokens.
    pub prompt_tokens: usize,
    /// Requested new tokens.
    pub max_new_tokens: usize,
    /// The local budget (prompt + new tokens).
    pub local_budget: usize,
    /// Whether a gateway and a trust policy are configured.
    pub remote_configured: bool,
}

/// Decides the route; `Err` says why the request cannot run as asked.
pub fn decide(i: &RouteInputs<'_>) -> Result<Decision, String> {
    let total = i.prompt_tokens + i.max_new_tokens;
    let fits = total <= i.local_budget;
    let adapter_desc = i
        .adapter
        .map_or(String::new(), |a| format!(" with adapter `{a}`"));
    // Why local is impossible, if it is.
    let local_blocker = if i.model == ModelChoice::Server {
        Some("the server model runs only on nodes".to_string())
    } else if !i.adapter_installed {
        Some(format!(
            "adapter `{}` is not installed on this device",
            i.adapter.unwrap_or_default()
        ))
    } else if !fits {
        Some(format!(
            "{} prompt + {} new tokens exceed the local budget of {}",
            i.prompt_tokens, i.max_new_tokens, i.local_budget
        ))
    } else {
        None
    };
    let remote = |reason: String| -> Result<Decision, String> {
        if i.remote_configured {
            Ok(Decision {
                route: Route::Remote,
                reason,
            })
        } else {
            Err(format!(
                "{reason}, but no gateway and trust policy are configured (pass --config FILE from `tandem-fleet dev --write-config`, or --gateway and --policy)"
            ))
        }
    };
    match (i.choice, local_blocker) {
        (RouteChoice::Local, Some(b)) => Err(format!("cannot run locally: {b}")),
        (RouteChoice::Local, None) => Ok(Decision {
            route: Route::Local,
            reason: format!(
                "local route requested; {total} tokens fit the budget of {}",
                i.local_budget
            ),
        }),
        (RouteChoice::Remote, _) => remote(format!(
            "remote route requested for the {} model{adapter_desc}",
            i.model
        )),
        (RouteChoice::Auto, Some(b)) => remote(b),
        (RouteChoice::Auto, None) => Ok(Decision {
            route: Route::Local,
            reason: format!(
                "device model{adapter_desc} is on this device and {} prompt + {} new tokens fit the local budget of {}",
                i.prompt_tokens, i.max_new_tokens, i.local_budget
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> RouteInputs<'static> {
        RouteInputs {
            choice: RouteChoice::Auto,
            model: ModelChoice::Device,
            adapter: None,
            adapter_installed: true,
            prompt_tokens: 10,
            max_new_tokens: 50,
            local_budget: 256,
            remote_configured: true,
        }
    }

    #[test]
    fn small_device_requests_stay_local() {
        let d = decide(&inputs()).expect("local");
        assert_eq!(d.route, Route::Local);
        assert!(
            d.reason.contains("fit the local budget of 256"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn each_blocker_sends_it_remote_with_its_reason() {
        type Change = fn(&mut RouteInputs<'static>);
        let cases: [(Change, &str); 3] = [
            (|i| i.model = ModelChoice::Server, "runs only on nodes"),
            (
                |i| {
                    i.adapter = Some("summarize");
                    i.adapter_installed = false;
                },
                "adapter `summarize` is not installed",
            ),
            (|i| i.max_new_tokens = 400, "exceed the local budget of 256"),
        ];
        for (change, why) in cases {
            let mut i = inputs();
            change(&mut i);
            let d = decide(&i).expect("remote");
            assert_eq!(d.route, Route::Remote);
            assert!(d.reason.contains(why), "{}", d.reason);
            i.remote_configured = false;
            let e = decide(&i).expect_err("no gateway");
            assert!(e.contains(why) && e.contains("no gateway"), "{e}");
            i.choice = RouteChoice::Local;
            let e = decide(&i).expect_err("forced local");
            assert!(
                e.starts_with("cannot run locally") && e.contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn forced_routes() {
        let mut i = inputs();
        i.choice = RouteChoice::Remote;
        assert_eq!(decide(&i).expect("remote").route, Route::Remote);
        i.choice = RouteChoice::Local;
        assert_eq!(decide(&i).expect("local").route, Route::Local);
        assert_eq!("remote".parse::<RouteChoice>(), Ok(RouteChoice::Remote));
        assert!("cloud".parse::<RouteChoice>().is_err());
    }
}
