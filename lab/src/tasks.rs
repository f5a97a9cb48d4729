//! Writing tasks for LoRA adapters: training/evaluation examples made from the corpus, and
//! automatic scoring. The prompt format itself is the runtime's ([`tandem_model::tasks`],
//! re-exported here): during adapter training only the answer and the end-of-text token are
//! scored ([`TaskBatcher`] masks the prompt).
//!
//! # Tasks
//!
//! - `proofread`: the input is a sentence with injected typos (adjacent letters swapped, a
//!   letter dropped, a letter doubled; one edit per started 50 characters); the answer is the
//!   original sentence.
//! - `truecase`: the input is a sentence in lower case; the answer restores its capitalisation
//!   (sentence starts, names, "I", …). Scored the same way.
//!
//! # Scoring
//!
//! Character error rate (CER) is the Levenshtein distance in characters divided by the
//! reference length. Each example is graded **good** (exact, or CER ≤ 2 %), **poor** (the output
//! is further from the reference than the input was), or **neutral** — the three-way grading of
//! the seed's Figure 3, here with an automatic grader.

use serde::{Deserialize, Serialize};

pub use tandem_model::tasks::{Task, answer, parse_answer, prompt};
use tandem_model::{Device, Tensor};

use crate::Result;
use crate::train::TrainError;
use crate::train::data::split_documents;
use crate::train::rng::SplitMix64;

/// The corrupted input for a clean `sentence`, drawn from `rng`.
pub fn corrupt(task: Task, sentence: &str, rng: &mut SplitMix64) -> String {
    match task {
        Task::Proofread => inject_typos(sentence, rng),
        Task::Truecase => sentence.to_lowercase(),
    }
}

/// One task example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The task.
    pub task: Task,
    /// What the model sees.
    pub input: String,
    /// The correct answer.
    pub target: String,
}

/// Sentences suitable for the tasks, from corpus text (documents separated by
/// `<|endoftext|>` lines): prose joined across line breaks, split after `.`, `!` or `?`, kept
/// when 24–120 characters, at least 4 words, plain ASCII, starting with a capital letter.
/// Speaker headings (all-capital paragraphs) are skipped.
pub fn extract_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for doc in split_documents(text) {
        for para in doc.split("\n\n") {
            let letters: Vec<char> = para.chars().filter(|c| c.is_ascii_alphabetic()).collect();
            if letters.is_empty() || letters.iter().all(|c| c.is_ascii_uppercase()) {
                continue;
            }
            let joined = para.split_whitespace().collect::<Vec<_>>().join(" ");
            for s in split_sentences(&joined) {
                if keep_sentence(s) {
                    out.push(s.to_string());
                }
            }
        }
    }
    out
}

fn split_sentences(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..bytes.len() {
        let end_mark = matches!(bytes[i], b'.' | b'!' | b'?');
        let next_is_space = bytes.get(i + 1) == Some(&b' ');
        let after = bytes.get(i + 2).copied();
        if end_mark
            && next_is_space
            && after.is_some_and(|c| c.is_ascii_uppercase() || c == b'"' || c == b'\'')
        {
            out.push(text[start..=i].trim());
            start = i + 2;
        }
    }
    if start < text.len() {
        out.push(text[start..].trim());
    }
    out
}

fn keep_sentence(s: &str) -> bool {
    let n = s.len();
    (24..=120).contains(&n)
        && s.is_ascii()
        && s.split(' ').count() >= 4
        && s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars().any(|c| c.is_ascii_lowercase())
        && matches!(s.chars().last(), Some('.' | '!' | '?' | '"' | '\''))
        && !s.contains("<|")
        && !s.chars().any(|c| c.is_ascii_control())
}

/// Injects typos: one edit per started 50 characters, each at a letter inside a word of at
/// least 3 letters, chosen among swapping it with the next letter, dropping it, or doubling it.
/// The result always differs from the input when the sentence has such a word.
pub fn inject_typos(sentence: &str, rng: &mut SplitMix64) -> String {
    // Edits can cancel (a doubling then a drop of the same letter); redraw until the sentence
    // changed, with a bound for sentences that have nothing to corrupt.
    let mut out = sentence.to_string();
    for _ in 0..16 {
        out = inject_typos_once(sentence, rng);
        if out != sentence {
            break;
        }
    }
    out
}

fn inject_typos_once(sentence: &str, rng: &mut SplitMix64) -> String {
    let mut chars: Vec<char> = sentence.chars().collect();
    let edits = 1 + chars.len().saturating_sub(1) / 50;
    for _ in 0..edits {
        for _attempt in 0..20 {
            let cands = letter_positions(&chars);
            if cands.is_empty() {
                break;
            }
            let i = cands[rng.below(cands.len() as u64) as usize];
            let before = chars.clone();
            match rng.below(3) {
                0 => {
                    if i + 1 < chars.len()
                        && chars[i + 1].is_ascii_alphabetic()
                        && chars[i] != chars[i + 1]
                    {
                        chars.swap(i, i + 1);
                    }
                }
                1 => {
                    chars.remove(i);
                }
                _ => chars.insert(i, chars[i]),
            }
            if chars != before {
                break;
            }
        }
    }
    chars.into_iter().collect()
}

/// Positions of letters inside words of at least 3 ASCII letters.
fn letter_positions(chars: &[char]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                i += 1;
            }
            if i - start >= 3 {
                out.extend(start..i);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Deterministic examples of `task` for `sentences` (example `i` uses the stream
/// `(seed, task, i)`). Sentences whose corruption equals the original are skipped.
pub fn make_examples(task: Task, sentences: &[String], seed: u64) -> Vec<Example> {
    sentences
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let mut rng = SplitMix64::derive(seed, task.name(), i as u64);
            let input = corrupt(task, s, &mut rng);
            (input != *s).then(|| Example {
                task,
                input,
                target: s.clone(),
            })
        })
        .collect()
}

/// Levenshtein distance between `a` and `b` in characters.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Character error rate of `hypothesis` against `reference`.
pub fn cer(hypothesis: &str, reference: &str) -> f64 {
    let n = reference.chars().count().max(1);
    levenshtein(hypothesis, reference) as f64 / n as f64
}

/// The three-way grade of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grade {
    /// Exact, or CER ≤ 2 %.
    Good,
    /// Neither good nor poor.
    Neutral,
    /// Further from the reference than the input was.
    Poor,
}

/// CER at or below which a response is good.
pub const GOOD_CER: f64 = 0.02;

/// Grades `output` for an example.
pub fn grade(ex: &Example, output: &str) -> Grade {
    let out_cer = cer(output, &ex.target);
    if output == ex.target || out_cer <= GOOD_CER {
        Grade::Good
    } else if out_cer > cer(&ex.input, &ex.target) {
        Grade::Poor
    } else {
        Grade::Neutral
    }
}

/// Aggregate scores over a set of examples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Examples scored.
    pub n: usize,
    /// Outputs equal to the target.
    pub exact: usize,
    /// Edit distance of the inputs to the targets, summed.
    pub input_edits: usize,
    /// Edit distance of the outputs to the targets, summed.
    pub output_edits: usize,
    /// Characters in the targets, summed.
    pub target_chars: usize,
    /// Good / neutral / poor counts.
    pub good: usize,
    /// Neutral count.
    pub neutral: usize,
    /// Poor count.
    pub poor: usize,
}

impl Scores {
    /// Adds one example's result.
    pub fn add(&mut self, ex: &Example, output: &str) {
        self.n += 1;
        self.exact += usize::from(output == ex.target);
        self.input_edits += levenshtein(&ex.input, &ex.target);
        self.output_edits += levenshtein(output, &ex.target);
        self.target_chars += ex.target.chars().count();
        match grade(ex, output) {
            Grade::Good => self.good += 1,
            Grade::Neutral => self.neutral += 1,
            Grade::Poor => self.poor += 1,
        }
    }

    fn ratio(a: usize, b: usize) -> f64 {
        if b == 0 { 0.0 } else { a as f64 / b as f64 }
    }

    /// Exact-match rate.
    pub fn exact_rate(&self) -> f64 {
        Self::ratio(self.exact, self.n)
    }

    /// Corpus-level CER of the inputs (total edits / total reference characters).
    pub fn input_cer(&self) -> f64 {
        Self::ratio(self.input_edits, self.target_chars)
    }

    /// Corpus-level CER of the outputs.
    pub fn output_cer(&self) -> f64 {
        Self::ratio(self.output_edits, self.target_chars)
    }

    /// Share of good responses.
    pub fn good_rate(&self) -> f64 {
        Self::ratio(self.good, self.n)
    }

    /// Share of poor responses.
    pub fn poor_rate(&self) -> f64 {
        Self::ratio(self.poor, self.n)
    }
}

/// Reads examples from JSON Lines (one [`Example`] per line; blank lines ignored).
pub fn parse_examples(text: &str) -> Result<Vec<Example>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| TrainError::Data(format!("examples line {}: {e}", i + 1)).into())
        })
        .collect()
}

/// Writes examples as JSON Lines.
pub fn examples_to_jsonl(examples: &[Example]) -> String {
    let mut s = String::new();
    for e in examples {
        // Serializing plain strings and unit enums cannot fail.
        s.push_str(&serde_json::to_string(e).unwrap_or_default());
        s.push('\n');
    }
    s
}

/// A tokenized example: prompt and answer (answer includes the end-of-text id).
#[derive(Debug, Clone)]
pub struct TokenizedExample {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Answer ids followed by end-of-text.
    pub answer: Vec<u32>,
}

/// Batches of task examples for adapter training: each row is `prompt ++ answer`, right-padded
/// with `pad`; the loss mask covers exactly the answer tokens (incl. end-of-text).
#[derive(Debug, Clone)]
pub struct TaskBatcher {
    examples: Vec<TokenizedExample>,
    pad: u32,
}

/// One adapter-training batch.
#[derive(Debug)]
pub struct TaskBatch {
    /// `[batch, len]` u32.
    pub inputs: Tensor,
    /// `[batch, len]` u32 (next tokens).
    pub targets: Tensor,
    /// `[batch, len]` f32, 1 where the target is an answer token.
    pub mask: Tensor,
    /// Number of answer tokens.
    pub answer_tokens: usize,
}

impl TaskBatcher {
    /// A batcher over non-empty `examples`.
    pub fn new(examples: Vec<TokenizedExample>, pad: u32) -> Result<Self> {
        if examples.is_empty()
            || examples
                .iter()
                .any(|e| e.prompt.is_empty() || e.answer.is_empty())
        {
            return Err(TrainError::Data(
                "task examples are empty or have an empty prompt/answer".into(),
            )
            .into());
        }
        Ok(Self { examples, pad })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples (never true for a constructed batcher).
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The batch for `step`, `batch` examples drawn with `(seed, "task-batch", step)`, rows cut
    /// to at most `max_len` positions.
    pub fn batch(
        &self,
        seed: u64,
        step: u64,
        batch: usize,
        max_len: usize,
        device: &Device,
    ) -> Result<TaskBatch> {
        let mut rng = SplitMix64::derive(seed, "task-batch", step);
        let rows: Vec<&TokenizedExample> = (0..batch)
            .map(|_| &self.examples[rng.below(self.examples.len() as u64) as usize])
            .collect();
        let len = rows
            .iter()
            .map(|e| e.prompt.len() + e.answer.len() - 1)
            .max()
            .unwrap_or(1)
            .min(max_len);
        let mut x = Vec::with_capacity(batch * len);
        let mut y = Vec::with_capacity(batch * len);
        let mut m = Vec::with_capacity(batch * len);
        let mut answer_tokens = 0;
        for e in rows {
            let seq: Vec<u32> = e.prompt.iter().chain(&e.answer).copied().collect();
            let first_answer = e.prompt.len(); // index in `seq` of the first answer token
            for p in 0..len {
                // Position p predicts seq[p + 1].
                let (xi, yi, mi) = match (seq.get(p), seq.get(p + 1)) {
                    (Some(&a), Some(&b)) => (a, b, if p + 1 >= first_answer { 1f32 } else { 0.0 }),
                    (Some(&a), None) => (a, self.pad, 0.0),
                    _ => (self.pad, self.pad, 0.0),
                };
                answer_tokens += usize::from(mi > 0.0);
                x.push(xi);
                y.push(yi);
                m.push(mi);
            }
        }
        Ok(TaskBatch {
            inputs: Tensor::from_vec(x, (batch, len), device)?,
            targets: Tensor::from_vec(y, (batch, len), device)?,
            mask: Tensor::from_vec(m, (batch, len), device)?,
            answer_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_and_cer() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("ab", "ba"), 2);
        assert!((cer("helo", "hello") - 0.2).abs() < 1e-12);
        assert_eq!(cer("x", ""), 1.0);
    }

    #[test]
    fn typos_are_small_deterministic_and_nonempty() {
        let s = "The quick brown fox jumps over the lazy dog near the river bank today.";
        let a = inject_typos(s, &mut SplitMix64::derive(1, "proofread", 0));
        let b = inject_typos(s, &mut SplitMix64::derive(1, "proofread", 0));
        assert_eq!(a, b);
        assert_ne!(a, s);
        let d = levenshtein(&a, s);
        // 2 edits for 71 characters; a swap costs 2.
        assert!((1..=4).contains(&d), "{d}: {a}");
        // Every seed changes the sentence.
        for i in 0..200 {
            assert_ne!(inject_typos(s, &mut SplitMix64::derive(9, "p", i)), s);
        }
        // Nothing to corrupt: unchanged.
        assert_eq!(inject_typos("a b c", &mut SplitMix64::new(0)), "a b c");
    }

    #[test]
    fn each_typo_kind_occurs() {
        let s = "Abcdefgh ijklmnop";
        let (mut swap, mut drop, mut double) = (false, false, false);
        for i in 0..100 {
            let t = inject_typos(s, &mut SplitMix64::derive(3, "k", i));
            match t.len() as i64 - s.len() as i64 {
                0 => swap = true,
                -1 => drop = true,
                1 => double = true,
                _ => {}
            }
        }
        assert!(swap && drop && double);
    }

    #[test]
    fn grading_follows_the_definition() {
        let ex = Example {
            task: Task::Proofread,
            input: "Teh cat sat on the mat today.".into(),
            target: "The cat sat on the mat today.".into(),
        };
        assert_eq!(grade(&ex, "The cat sat on the mat today."), Grade::Good);
        // One edit in 29 chars = 3.4 %: not good, but better than the input (2 edits).
        assert_eq!(grade(&ex, "The cat sat on the mat toda."), Grade::Neutral);
        // Same as input: neutral (not worse).
        assert_eq!(grade(&ex, &ex.input), Grade::Neutral);
        assert_eq!(grade(&ex, "Dogs."), Grade::Poor);
        let mut s = Scores::default();
        s.add(&ex, "The cat sat on the mat today.");
        s.add(&ex, "Dogs.");
        assert_eq!((s.n, s.exact, s.good, s.poor, s.neutral), (2, 1, 1, 1, 0));
        assert!((s.input_cer() - 4.0 / 58.0).abs() < 1e-12);
        assert!(s.output_cer() > s.input_cer());
    }

    #[test]
    fn sentences_are_extracted_from_prose_only() {
        let text = "FIRST LORD.\nNow, God delay our rebellion: as we are ourselves, what things\nare we! Merely our own traitors, as you see.\n\nok.\n<|endoftext|>\nIn the beginning, God created the heavens and the earth. The earth was formless and empty.";
        let s = extract_sentences(text);
        assert_eq!(
            s,
            vec![
                "Now, God delay our rebellion: as we are ourselves, what things are we!",
                "Merely our own traitors, as you see.",
                "In the beginning, God created the heavens and the earth.",
                "The earth was formless and empty.",
            ]
        );
    }

    #[test]
    fn examples_round_trip_jsonl_and_reject_garbage() -> Result<()> {
        let sents = vec![
            "The cat sat on the mat today.".to_string(),
            "A b.".to_string(),
        ];
        let ex = make_examples(Task::Truecase, &sents, 1);
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].input, "the cat sat on the mat today.");
        let ex2 = make_examples(Task::Proofread, &sents, 1);
        // "A b." has no word to corrupt.
        assert_eq!(ex2.len(), 1);
        assert_eq!(parse_examples(&examples_to_jsonl(&ex))?, ex);
        assert!(parse_examples("{\"task\":\"proofread\"}").is_err());
        assert!(parse_examples("not json").is_err());
        Ok(())
    }

    #[test]
    fn every_truncation_and_byte_flip_of_examples_is_handled() -> Result<()> {
        let ex = make_examples(
            Task::Proofread,
            &["The cat sat on the mat today.".to_string()],
            3,
        );
        let text = examples_to_jsonl(&ex);
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            // Never panics; a cut inside the line is an error, a cut of only the newline is not.
            if let Ok(s) = std::str::from_utf8(&bytes[..cut]) {
                let r = parse_examples(s);
                assert_eq!(r.is_ok(), cut == 0 || cut == bytes.len() - 1, "cut {cut}");
            }
        }
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x01;
            if let Ok(s) = std::str::from_utf8(&b)
                && let Ok(parsed) = parse_examples(s)
            {
                // A flip that still parses changed a string (or whitespace), never the count.
                assert!(parsed.len() <= 1);
            }
        }
        Ok(())
    }

    #[test]
    fn task_batches_mask_exactly_the_answer() -> Result<()> {
        let ex = vec![
            TokenizedExample {
                prompt: vec![10, 11, 12],
                answer: vec![20, 21, 0],
            },
            TokenizedExample {
                prompt: vec![13],
                answer: vec![22, 0],
            },
        ];
        let b = TaskBatcher::new(ex, 0)?;
        let dev = Device::Cpu;
        let mut seen_long = false;
        for step in 0..20 {
            let tb = b.batch(4, step, 2, 64, &dev)?;
            let x = tb.inputs.to_vec2::<u32>()?;
            let y = tb.targets.to_vec2::<u32>()?;
            let m = tb.mask.to_vec2::<f32>()?;
            for r in 0..2 {
                if x[r][0] == 10 {
                    seen_long = true;
                    assert_eq!(x[r], vec![10, 11, 12, 20, 21]);
                    assert_eq!(y[r], vec![11, 12, 20, 21, 0]);
                    assert_eq!(m[r], vec![0.0, 0.0, 1.0, 1.0, 1.0]);
                } else {
                    assert_eq!(&x[r][..2], &[13, 22]);
                    assert_eq!(&y[r][..2], &[22, 0]);
                    assert_eq!(&m[r][..2], &[1.0, 1.0]);
                    assert!(m[r][2..].iter().all(|&v| v == 0.0));
                }
            }
        }
        assert!(seen_long);
        assert!(TaskBatcher::new(vec![], 0).is_err());
        Ok(())
    }
}
