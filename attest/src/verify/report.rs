//! The per-step verification report, for people and as JSON.

use serde::Serialize;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    /// The step ran and passed.
    Pass,
    /// The step ran and failed.
    Fail,
    /// The step did not run because an earlier one failed.
    NotRun,
}

/// One step of the checklist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// 0 is parsing; 1.. follow the checklist order.
    pub number: u8,
    /// Short name, e.g. `"root of trust"`.
    pub name: &'static str,
    /// Outcome.
    pub status: StepStatus,
    /// What was checked, or what failed and what to check.
    pub detail: String,
}

/// The report of one verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `"node"` or `"release"`.
    pub subject: &'static str,
    /// The steps in the order they ran.
    pub steps: Vec<StepReport>,
    /// Whether the result came from a [`super::VerificationCache`].
    pub cached: bool,
}

impl Report {
    pub(crate) fn new(subject: &'static str) -> Self {
        Self {
            subject,
            steps: Vec::new(),
            cached: false,
        }
    }

    /// True only if every step ran and passed.
    pub fn passed(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.status == StepStatus::Pass)
    }

    /// The first failed step, if any.
    pub fn first_failure(&self) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.status == StepStatus::Fail)
    }

    /// A human-readable report, one line per step.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            let mark = match s.status {
                StepStatus::Pass => "PASS",
                StepStatus::Fail => "FAIL",
                StepStatus::NotRun => "----",
            };
            out.push_str(&format!(
                "[{mark}] {}. {}: {}\n",
                s.number, s.name, s.detail
            ));
        }
        let verdict = if self.passed() {
            "VERIFIED"
        } else {
            "NOT VERIFIED"
        };
        out.push_str(&format!(
            "{} {verdict}{}\n",
            self.subject,
            if self.cached { " (cached)" } else { "" }
        ));
        out
    }

    /// The report as JSON.
    pub fn to_json_value(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("passed".into(), self.passed().into());
        }
        v
    }
}

/// Runs checklist steps in order; after the first failure the rest are recorded as not run.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) report: Report,
    failed: bool,
}

impl Run {
    pub(crate) fn new(subject: &'static str) -> Self {
        Self {
            report: Report::new(subject),
            failed: false,
        }
    }

    /// Runs `f` as step `number`; `f` returns a value and a detail for the report.
    pub(crate) fn step<T>(
        &mut self,
        number: u8,
        name: &'static str,
        f: impl FnOnce() -> Result<(T, String), String>,
    ) -> Option<T> {
        if self.failed {
            self.report.steps.push(StepReport {
                number,
                name,
                status: StepStatus::NotRun,
                detail: "not run: an earlier step failed".into(),
            });
            return None;
        }
        match f() {
            Ok((v, detail)) => {
                self.report.steps.push(StepReport {
                    number,
                    name,
                    status: StepStatus::Pass,
                    detail,
                });
                Some(v)
            }
            Err(detail) => {
                self.failed = true;
                self.report.steps.push(StepReport {
                    number,
                    name,
                    status: StepStatus::Fail,
                    detail,
                });
                None
            }
        }
    }
}
