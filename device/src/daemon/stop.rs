//! Stop sequences over a stream of text deltas: text is handed on as soon as it cannot be the
//! start of a stop sequence; a stop sequence and everything after it never is.

/// Holds back the shortest tail of the text that could still begin a stop sequence.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub(crate) fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds `text`; returns what may be handed on now and whether a stop sequence was reached
    /// (then the returned text is everything before it, and the rest is discarded).
    pub(crate) fn push(&mut self, text: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (text.to_string(), false);
        }
        self.held.push_str(text);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..pos].to_string();
            self.held.clear();
            return (out, true);
        }
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let len = self.held.len();
        let mut keep = 0;
        for k in (1..longest.min(len + 1)).rev() {
            let at = len - k;
            if self.held.is_char_boundary(at)
                && self.stops.iter().any(|s| s.starts_with(&self.held[at..]))
            {
                keep = k;
                break;
            }
        }
        let out = self.held[..len - keep].to_string();
        self.held.drain(..len - keep);
        (out, false)
    }

    /// The held-back tail at the end of the stream (no stop sequence came).
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `deltas`; returns the text handed on and whether it stopped.
    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            let (t, hit) = m.push(d);
            out.push_str(&t);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stops_across_deltas_and_hands_on_everything_else() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["\n\n"], &["one\n", "\ntwo"]), ("one".into(), true));
        assert_eq!(run(&["END"], &["xE", "N", "D", "y"]), ("x".into(), true));
        // A partial match that fails is handed on.
        assert_eq!(run(&["END"], &["xEN", "x"]), ("xENx".into(), false));
        // A partial match at the very end is handed on at finish.
        assert_eq!(run(&["END"], &["xEN"]), ("xEN".into(), false));
        // The earliest of several stop sequences wins.
        assert_eq!(run(&["c", "ab"], &["xabc"]), ("x".into(), true));
        // Multi-byte text is never cut inside a character.
        assert_eq!(run(&["é!"], &["caf", "é", "?"]), ("café?".into(), false));
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".into(), true));
    }

    #[test]
    fn text_is_held_only_while_it_can_still_start_a_stop() {
        let mut m = StopMatcher::new(vec!["###".into()]);
        assert_eq!(m.push("ab#"), ("ab".into(), false));
        assert_eq!(m.push("#"), (String::new(), false));
        assert_eq!(m.push("x"), ("##x".into(), false));
        assert_eq!(m.finish(), "");
    }
}
