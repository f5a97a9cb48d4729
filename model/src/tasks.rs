//! The task prompt format shared by the device and the server model (the tasks' training and
//! grading live in the `tandem-lab` crate, `tandem_lab::tasks`).
//!
//! ```text
//! Task: <name>\nInput: <input>\nOutput: <answer><|endoftext|>
//! ```
//!
//! The model is given everything up to and including `Output:` and generates ` <answer>`
//! (with its leading space) until `<|endoftext|>` or a newline.

use serde::{Deserialize, Serialize};

use crate::{Result, UsageError};

/// The task adapters Tandem ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Fix injected typos.
    Proofread,
    /// Restore capitalisation of a lower-cased sentence.
    Truecase,
}

impl Task {
    /// All tasks.
    pub const ALL: [Task; 2] = [Task::Proofread, Task::Truecase];

    /// The name used in prompts, adapter directories and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Task::Proofread => "proofread",
            Task::Truecase => "truecase",
        }
    }

    /// Parses a task name.
    pub fn from_name(name: &str) -> Result<Self> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| UsageError::UnknownTask(name.to_string()).into())
    }
}

/// The prompt for `task` on `input` (everything before the answer).
pub fn prompt(task: Task, input: &str) -> String {
    format!("Task: {}\nInput: {}\nOutput:", task.name(), input)
}

/// The answer text the model is trained to produce after [`prompt`] (before end-of-text).
pub fn answer(target: &str) -> String {
    format!(" {target}")
}

/// Cleans a generated answer: drops the leading space and anything from the first newline.
pub fn parse_answer(generated: &str) -> String {
    let s = generated.split('\n').next().unwrap_or("");
    s.strip_prefix(' ').unwrap_or(s).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_and_answer_format() {
        assert_eq!(
            prompt(Task::Proofread, "Teh cat."),
            "Task: proofread\nInput: Teh cat.\nOutput:"
        );
        assert_eq!(answer("The cat."), " The cat.");
        assert_eq!(parse_answer(" The cat.\nTask: x"), "The cat.");
        assert_eq!(parse_answer(""), "");
        assert_eq!(Task::from_name("truecase").ok(), Some(Task::Truecase));
        assert!(Task::from_name("summarize").is_err());
    }
}
