//! Chat templates: the Jinja program a chat model ships to turn a conversation into its prompt.
//!
//! Rendered the way Hugging Face transformers (5.x, `apply_chat_template(..., tokenize=False)`,
//! `transformers/utils/chat_template_utils.py`) renders them, so a prompt built here is byte for
//! byte the one the model was trained on:
//!
//! * the environment has `trim_blocks` and `lstrip_blocks` on, loop controls (`break`,
//!   `continue`), and Python's `str`/`dict`/`list` methods (`minijinja-contrib`'s `pycompat`);
//! * the template sees `messages` (a list of `{role, content}`), `add_generation_prompt`,
//!   `bos_token` and `eos_token` (only when the model has them, as transformers passes only the
//!   special tokens that are set), `raise_exception(msg)` and `strftime_now(format)`;
//! * `tojson` is Python's `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
//!   sort_keys=False)`, not Jinja's HTML-safe filter, and `True`/`False`/`None` print as Python
//!   prints them.
//!
//! Where the template comes from, in transformers' order: `chat_template.jinja` (what
//! transformers 5 writes), else `tokenizer_config.json`'s `chat_template` (a string, or a list
//! of `{name, template}` of which the one named `default` is used); a GGUF file's
//! `tokenizer.chat_template` goes through [`ChatTemplate::from_source`].
//!
//! Templates are untrusted input: every failure (syntax, `raise_exception`, a runtime type error)
//! is an [`Error::ChatTemplate`] naming where the template came from; nothing panics, and the
//! engine has no file, network or clock access (the caller hands in the time for
//! `strftime_now`).

use std::fmt::Write as _;
use std::path::Path;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind, State, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{Error, LoadError, Result};

/// The name the template is compiled under (it appears in engine messages as `chat_template:LINE`).
const TEMPLATE_NAME: &str = "chat_template";

/// The most work one render may do (see [`environment`]).
const FUEL: u64 = 20_000_000;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` (or whatever else the template knows, e.g. `tool`).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    origin: String,
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// Compiles `source` (e.g. a GGUF file's `tokenizer.chat_template`) with the model's BOS and
    /// EOS token strings. Errors name the template as "chat template"; use
    /// [`ChatTemplate::from_source`] to name the file it came from.
    pub fn new(
        source: impl Into<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<ChatTemplate> {
        ChatTemplate::from_source("chat template", source, bos_token, eos_token)
    }

    /// Compiles `source`; `origin` says where it came from in error messages (a path, or e.g.
    /// `model.gguf: tokenizer.chat_template`).
    pub fn from_source(
        origin: impl Into<String>,
        source: impl Into<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<ChatTemplate> {
        let origin = origin.into();
        let mut env = environment();
        env.add_template_owned(TEMPLATE_NAME, source.into())
            .map_err(|e| template_error(&origin, "does not compile", &e))?;
        Ok(ChatTemplate {
            origin,
            env,
            bos_token,
            eos_token,
        })
    }

    /// The chat template of the Hugging Face model directory `dir`, or `None` if it has none.
    ///
    /// Looks at `chat_template.jinja`, then `tokenizer_config.json`'s `chat_template`; the BOS
    /// and EOS strings come from `tokenizer_config.json`'s `bos_token` / `eos_token` (a string
    /// or an `{"content": ...}` object) when that file exists.
    pub fn from_model_dir(dir: &Path) -> Result<Option<ChatTemplate>> {
        let config_path = dir.join("tokenizer_config.json");
        let config = match read_if_exists(&config_path)? {
            Some(bytes) => Some(TokenizerConfig::parse(&bytes, &config_path)?),
            None => None,
        };
        let (bos, eos) = config
            .as_ref()
            .map_or((None, None), |c| (c.bos_token.clone(), c.eos_token.clone()));

        let jinja_path = dir.join("chat_template.jinja");
        if let Some(bytes) = read_if_exists(&jinja_path)? {
            let source = String::from_utf8(bytes).map_err(|_| Error::ChatTemplate {
                origin: jinja_path.display().to_string(),
                reason: "is not UTF-8".into(),
            })?;
            return ChatTemplate::from_source(jinja_path.display().to_string(), source, bos, eos)
                .map(Some);
        }
        match config.and_then(|c| c.chat_template) {
            Some(source) => ChatTemplate::from_source(
                format!("{} (chat_template)", config_path.display()),
                source,
                bos,
                eos,
            )
            .map(Some),
            None => Ok(None),
        }
    }

    /// Where the template came from (as used in error messages).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The BOS token string the template sees, if any.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The EOS token string the template sees, if any.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders `messages`; with `add_generation_prompt` the prompt ends with the header of an
    /// assistant turn (if the template supports it). A template that calls `strftime_now`
    /// fails here: use [`ChatTemplate::render_at`].
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_inner(messages, add_generation_prompt, None)
    }

    /// [`ChatTemplate::render`] with the time `strftime_now` formats: `unix_secs` seconds since
    /// the Unix epoch, formatted as UTC (transformers uses the local time; pass a shifted value
    /// for a local date).
    pub fn render_at(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        unix_secs: i64,
    ) -> Result<String> {
        self.render_inner(messages, add_generation_prompt, Some(unix_secs))
    }

    fn render_inner(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        now: Option<i64>,
    ) -> Result<String> {
        if messages.is_empty() {
            // transformers refuses an empty conversation too.
            return Err(Error::ChatTemplate {
                origin: self.origin.clone(),
                reason: "cannot render an empty conversation; give at least one message".into(),
            });
        }
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_error(&self.origin, "failed", &e))?;
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", messages_value(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            (
                "strftime_now",
                Value::from_function(move |format: String| strftime_now(now, &format)),
            ),
        ];
        // transformers passes only the special tokens that are set; an unset one is undefined.
        if let Some(b) = &self.bos_token {
            ctx.push(("bos_token", Value::from(b.as_str())));
        }
        if let Some(e) = &self.eos_token {
            ctx.push(("eos_token", Value::from(e.as_str())));
        }
        tmpl.render(Value::from_pairs(ctx))
            .map_err(|e| template_error(&self.origin, "failed", &e))
    }
}

/// `messages` as transformers hands them over: a list of dicts with keys in the order `role`,
/// `content` (the order `tojson` writes them in).
fn messages_value(messages: &[Message]) -> Value {
    let list: Vec<Value> = messages
        .iter()
        .map(|m| {
            Value::from_pairs([
                ("role", Value::from(m.role.as_str())),
                ("content", Value::from(m.content.as_str())),
            ])
        })
        .collect();
    Value::from(list)
}

/// The fields of `tokenizer_config.json` a chat template needs.
#[derive(Debug, Default)]
struct TokenizerConfig {
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl TokenizerConfig {
    fn parse(bytes: &[u8], path: &Path) -> Result<TokenizerConfig> {
        let bad = |reason: String| Error::ChatTemplate {
            origin: path.display().to_string(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("is not valid JSON: {e}")))?;
        let token = |key: &str| -> Result<Option<String>> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                // An AddedToken: {"__type": "AddedToken", "content": "<s>", ...}.
                Some(serde_json::Value::Object(o)) => match o.get("content") {
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    _ => Err(bad(format!(
                        "`{key}` is an object without a string `content`"
                    ))),
                },
                Some(other) => Err(bad(format!(
                    "`{key}` must be a string or an object with `content`, not {other}"
                ))),
            }
        };
        let chat_template = match v.get("chat_template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // Several named templates; transformers uses `default` unless tools are passed.
            Some(serde_json::Value::Array(list)) => {
                let mut names = Vec::new();
                let mut found = None;
                for item in list {
                    let name = item.get("name").and_then(serde_json::Value::as_str);
                    let template = item.get("template").and_then(serde_json::Value::as_str);
                    let (Some(name), Some(template)) = (name, template) else {
                        return Err(bad(
                            "`chat_template` list entries must be {\"name\": ..., \"template\": ...}"
                                .into(),
                        ));
                    };
                    if name == "default" {
                        found = Some(template.to_string());
                    }
                    names.push(name.to_string());
                }
                Some(found.ok_or_else(|| {
                    bad(format!(
                        "`chat_template` lists templates {names:?} but none is named `default`"
                    ))
                })?)
            }
            Some(_) => {
                return Err(bad(
                    "`chat_template` must be a string or a list of {name, template}".into(),
                ));
            }
        };
        Ok(TokenizerConfig {
            chat_template,
            bos_token: token("bos_token")?,
            eos_token: token("eos_token")?,
        })
    }
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LoadError::Io {
            path: path.to_owned(),
            source,
        }
        .into()),
    }
}

/// The engine's message (kind, detail, `chat_template:LINE`) and its causes, without the debug
/// dump of variables (which would copy the conversation into the error).
fn template_error(origin: &str, what: &str, e: &minijinja::Error) -> Error {
    let mut reason = format!("{what}: {e}");
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let _ = write!(reason, ": {c}");
        cause = c.source();
    }
    Error::ChatTemplate {
        origin: origin.to_string(),
        reason,
    }
}

/// The environment transformers' `_cached_compile_jinja_template` builds, in minijinja.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build();
    // The default delimiters always build; fall back to them rather than panic.
    if let Ok(s) = syntax {
        env.set_syntax(s);
    }
    env.set_debug(false);
    // A template is a program from the model's files: bound its work (about one unit per
    // engine instruction; `tests/chat_template.rs` renders 2,000 messages with Qwen2.5's
    // template within it) and its recursion, so a hostile one fails with "ran out of fuel"
    // instead of hanging.
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(100);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    // Jinja2's `Environment` never auto-escapes unless asked; templates are not HTML.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_unknown_method_callback(python_methods);
    env.set_formatter(python_formatter);
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", raise_exception);
    env
}

/// Python's methods on strings, dicts and lists (`minijinja-contrib`'s `pycompat`), with
/// `str.title` made exact: Python starts a word after any uncased character (`"it's"` →
/// `"It'S"`, `"a-b"` → `"A-B"`), pycompat only after whitespace.
fn python_methods(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    if let ("title", Some(s), []) = (method, value.as_str(), args) {
        let mut out = String::with_capacity(s.len());
        let mut prev_cased = false;
        for c in s.chars() {
            let cased = c.is_uppercase() || c.is_lowercase();
            if prev_cased {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            prev_cased = cased;
        }
        return Ok(Value::from(out));
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// `{{ x }}` as Python's `str(x)` for the values where minijinja prints otherwise.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &mut State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Bool => {
            let s = if value.is_true() { "True" } else { "False" };
            out.write_str(s).map_err(minijinja::Error::from)
        }
        ValueKind::None => out.write_str("None").map_err(minijinja::Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    ))
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`:
/// Python's `json.dumps` with those arguments.
fn tojson(
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let bad = |msg: String| minijinja::Error::new(ErrorKind::InvalidOperation, msg);
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent: Option<String> = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.kind() {
            ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
            ValueKind::Number => {
                let n = v
                    .as_i64()
                    .ok_or_else(|| bad(format!("tojson: indent must be an integer, not {v}")))?;
                Some(" ".repeat(usize::try_from(n).unwrap_or(0)))
            }
            _ => return Err(bad(format!("tojson: bad indent {v}"))),
        },
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let (item_sep, key_sep) = match kwargs.get::<Option<Value>>("separators")? {
        Some(s) if !s.is_none() => {
            let parts: Vec<Value> = s.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_string(),
                    b.as_str().unwrap_or_default().to_string(),
                ),
                _ => return Err(bad("tojson: separators must be two strings".into())),
            }
        }
        // Python's defaults: (', ', ': '), or (',', ': ') when indenting.
        _ if indent.is_some() => (",".into(), ": ".into()),
        _ => (", ".into(), ": ".into()),
    };
    kwargs.assert_all_used()?;
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        ensure_ascii,
        sort_keys,
    };
    let mut out = String::new();
    opts.write(&mut out, value, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl JsonOpts {
    fn newline(&self, out: &mut String, level: usize) {
        if let Some(i) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(i);
            }
        }
    }

    fn write(
        &self,
        out: &mut String,
        v: &Value,
        level: usize,
    ) -> std::result::Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&python_number(v)),
            ValueKind::String => self.string(out, v.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(out, level, '[', ']', &items, |o, item, l| {
                    self.write(o, item, l)
                })?;
            }
            ValueKind::Map => {
                let mut pairs = Vec::new();
                for k in v.try_iter()? {
                    let val = v.get_item(&k)?;
                    pairs.push((json_key(&k)?, val));
                }
                if self.sort_keys {
                    pairs.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container(out, level, '{', '}', &pairs, |o, (k, val), l| {
                    self.string(o, k);
                    o.push_str(&self.key_sep);
                    self.write(o, val, l)
                })?;
            }
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "tojson: a value of type {} is not JSON serializable",
                        v.kind()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn container<T>(
        &self,
        out: &mut String,
        level: usize,
        open: char,
        close: char,
        items: &[T],
        mut each: impl FnMut(&mut String, &T, usize) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            self.newline(out, level + 1);
            each(out, item, level + 1)?;
        }
        self.newline(out, level);
        out.push(close);
        Ok(())
    }

    /// Python's `json` string encoding (`encode_basestring` / `encode_basestring_ascii`).
    fn string(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c if self.ensure_ascii && !(' '..='~').contains(&c) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A map key as `json.dumps` writes it: strings as is, numbers, booleans and `None` converted.
fn json_key(k: &Value) -> std::result::Result<String, minijinja::Error> {
    match k.kind() {
        ValueKind::String => Ok(k.as_str().unwrap_or_default().to_string()),
        ValueKind::Number => Ok(python_number(k)),
        ValueKind::Bool => Ok(if k.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Ok("null".into()),
        _ => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "tojson: keys must be str, int, float, bool or None, not {}",
                k.kind()
            ),
        )),
    }
}

/// A number as Python's `repr` writes it (`1`, `1.0`, `1e+20`, `NaN`, `Infinity`).
fn python_number(v: &Value) -> String {
    if v.is_integer() {
        return v.to_string();
    }
    let Ok(f) = f64::try_from(v.clone()) else {
        return v.to_string();
    };
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Python switches to exponent notation outside 1e-4 <= |f| < 1e16.
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{f:e}"); // shortest digits, e.g. `1e20`, `1.5e-7`
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    let s = format!("{f}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// `strftime_now(format)` over `now` (Unix seconds, UTC). Supports the C89 conversions chat
/// templates use; others are an error rather than a silently wrong date.
fn strftime_now(now: Option<i64>, format: &str) -> std::result::Result<String, minijinja::Error> {
    let err = |msg: String| minijinja::Error::new(ErrorKind::InvalidOperation, msg);
    let Some(now) = now else {
        return Err(err(
            "the template calls strftime_now but no time was given (render with ChatTemplate::render_at)"
                .into(),
        ));
    };
    let t = CivilTime::from_unix(now);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let month = MONTHS[(t.month - 1) as usize];
    let day = DAYS[t.weekday as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            return Err(err(format!("strftime_now: format {format:?} ends in `%`")));
        };
        let _ = match spec {
            'Y' => write!(out, "{}", t.year),
            'y' => write!(out, "{:02}", t.year.rem_euclid(100)),
            'm' => write!(out, "{:02}", t.month),
            'd' => write!(out, "{:02}", t.day),
            'e' => write!(out, "{:2}", t.day),
            'j' => write!(out, "{:03}", t.yday),
            'H' => write!(out, "{:02}", t.hour),
            'I' => write!(out, "{:02}", (t.hour + 11) % 12 + 1),
            'p' => write!(out, "{}", if t.hour < 12 { "AM" } else { "PM" }),
            'M' => write!(out, "{:02}", t.minute),
            'S' => write!(out, "{:02}", t.second),
            'B' => write!(out, "{month}"),
            'b' | 'h' => write!(out, "{}", &month[..3]),
            'A' => write!(out, "{day}"),
            'a' => write!(out, "{}", &day[..3]),
            'u' => write!(out, "{}", t.weekday + 1),
            'w' => write!(out, "{}", (t.weekday + 1) % 7),
            'F' => write!(out, "{}-{:02}-{:02}", t.year, t.month, t.day),
            'T' => write!(out, "{:02}:{:02}:{:02}", t.hour, t.minute, t.second),
            '%' => write!(out, "%"),
            other => {
                return Err(err(format!(
                    "strftime_now: `%{other}` is not supported (in {format:?})"
                )));
            }
        };
    }
    Ok(out)
}

/// A UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CivilTime {
    year: i64,
    month: u32,
    day: u32,
    /// Day of the year, 1-based.
    yday: u32,
    /// Monday = 0.
    weekday: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl CivilTime {
    /// Howard Hinnant's `civil_from_days` (proleptic Gregorian calendar).
    fn from_unix(secs: i64) -> CivilTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const CUMULATIVE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let yday = CUMULATIVE[(month - 1) as usize] + day + u32::from(leap && month > 2);
        // 1970-01-01 was a Thursday (Monday = 0 → 3).
        let weekday = (days + 3).rem_euclid(7) as u32;
        CivilTime {
            year,
            month,
            day,
            yday,
            weekday,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str) -> String {
        let t = ChatTemplate::new(src, Some("<s>".into()), None).expect("compiles");
        t.render_at(&[Message::new("user", "hi")], false, 1_700_000_000)
            .expect("renders")
    }

    #[test]
    fn civil_time_matches_known_dates() {
        // 2023-11-14 22:13:20 UTC, a Tuesday, day 318.
        let t = CivilTime::from_unix(1_700_000_000);
        assert_eq!(
            (t.year, t.month, t.day, t.yday, t.weekday),
            (2023, 11, 14, 318, 1)
        );
        assert_eq!((t.hour, t.minute, t.second), (22, 13, 20));
        let leap = CivilTime::from_unix(951_782_400); // 2000-02-29 00:00:00
        assert_eq!(
            (leap.year, leap.month, leap.day, leap.yday),
            (2000, 2, 29, 60)
        );
        let before = CivilTime::from_unix(-1); // 1969-12-31 23:59:59, a Wednesday
        assert_eq!(
            (
                before.year,
                before.month,
                before.day,
                before.weekday,
                before.second
            ),
            (1969, 12, 31, 2, 59)
        );
    }

    #[test]
    fn strftime_now_formats_and_refuses_unknown_conversions() {
        assert_eq!(
            render("{{ strftime_now('%d %b %Y, %A %H:%M:%S %j %%') }}"),
            "14 Nov 2023, Tuesday 22:13:20 318 %"
        );
        let t = ChatTemplate::new("{{ strftime_now('%Z') }}", None, None).expect("compiles");
        let e = t
            .render_at(&[Message::new("user", "hi")], false, 0)
            .expect_err("%Z is not supported");
        assert!(e.to_string().contains("%Z"), "{e}");
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None).expect("compiles");
        let e = t
            .render(&[Message::new("user", "hi")], false)
            .expect_err("no time given");
        assert!(e.to_string().contains("render_at"), "{e}");
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            None,
            None,
        )
        .expect("compiles");
        let e = t
            .render(&[Message::new("user", "hi")], false)
            .expect_err("bounded");
        assert!(e.to_string().contains("fuel"), "{e}");
        let t = ChatTemplate::new(
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            None,
            None,
        )
        .expect("compiles");
        assert!(t.render(&[Message::new("user", "hi")], false).is_err());
    }

    #[test]
    fn python_numbers() {
        assert_eq!(
            render("{{ [1, 1.0, 0.5, 1e20, 1.5e-7, -2.25, 123456789.125] | tojson }}"),
            "[1, 1.0, 0.5, 1e+20, 1.5e-07, -2.25, 123456789.125]"
        );
    }

    #[test]
    fn tojson_options() {
        assert_eq!(
            render("{{ {'b': [1, {}], 'a': []} | tojson(indent=2, sort_keys=true) }}"),
            "{\n  \"a\": [],\n  \"b\": [\n    1,\n    {}\n  ]\n}"
        );
        assert_eq!(
            render(
                "{{ {'a': 'é\u{1F600}\\u0001'} | tojson(ensure_ascii=true, separators=(',', ':')) }}"
            ),
            "{\"a\":\"\\u00e9\\ud83d\\ude00\\u0001\"}"
        );
    }

    #[test]
    fn undefined_bos_renders_empty_and_bad_token_config_is_an_error() {
        let t = ChatTemplate::new("[{{ eos_token }}]", None, None).expect("compiles");
        assert_eq!(
            t.render(&[Message::new("user", "x")], true)
                .expect("renders"),
            "[]"
        );
        let p = Path::new("tokenizer_config.json");
        for bad in [
            &br#"{"bos_token": 3}"#[..],
            br#"{"chat_template": 3}"#,
            br#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#,
            br#"{"chat_template": [{"name": "default"}]}"#,
            b"{not json",
        ] {
            let e = TokenizerConfig::parse(bad, p).expect_err("refused");
            assert!(
                matches!(e, Error::ChatTemplate { .. }),
                "{}: {e}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
