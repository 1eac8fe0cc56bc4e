//! Templating as KumoMTA does it: MiniJinja over the subject, the bodies
//! and the header values, with the variables of one recipient (the global
//! `substitutions`, then the recipient's, then its `name` and `email`).
//!
//! Bounded while it is produced: the output of one message is written into
//! a sink that refuses to grow past the message size limit, every template
//! runs on a fuel budget, the filters that allocate new strings charge a
//! per-message budget before they allocate, and the operators that could
//! build a string larger than the template and its values (`*`, `~`) are
//! refused when the template compiles. No value printed into a header may
//! hold CR or LF.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};
use serde::Deserialize;

use super::model::{Recipient, Substitutions};

/// `template_dialect`: `Jinja` (the default) or `Static` (no templating).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Dialect {
    #[default]
    Jinja,
    Static,
}

/// The limits one rendered message is held to.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Instructions one template may run.
    pub fuel: u64,
    /// Bytes of output of all templates of one message, and bytes the
    /// filters may allocate while producing it.
    pub max_output: usize,
}

/// A template that could not be compiled: the request is refused (422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError(pub String);

/// Why one recipient's message could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// The template failed: the sentence names the field and line.
    Failed(String),
    /// The output would pass `max_output` bytes.
    TooLarge(usize),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Failed(message) => f.write_str(message),
            RenderError::TooLarge(limit) => {
                write!(f, "the rendered message would be larger than {limit} bytes")
            }
        }
    }
}

/// Names of templates that are header values: what they print may not
/// hold CR or LF.
fn is_header(name: &str) -> bool {
    name == "content.subject" || name.starts_with("content.headers.") || name == "content (header)"
}

thread_local! {
    /// Bytes the filters may still allocate in the render on this thread.
    static ALLOC_BUDGET: Cell<usize> = const { Cell::new(0) };
}

fn charge(bytes: usize) -> Result<(), Error> {
    ALLOC_BUDGET.with(|budget| {
        let left = budget.get();
        if bytes > left {
            Err(Error::new(
                ErrorKind::InvalidOperation,
                "the template builds values larger than the message size limit",
            ))
        } else {
            budget.set(left - bytes);
            Ok(())
        }
    })
}

/// The compiled templates of one request.
///
/// A field without `{{`, `{%` or `{#` prints itself: it is not compiled,
/// and a request whose fields are all plain text builds no MiniJinja
/// environment and no variables at all (the common case, and a hot path).
pub struct Templates {
    /// `None` when no field is a template.
    env: Option<Environment<'static>>,
    sources: BTreeMap<String, String>,
    bounds: Bounds,
}

/// Whether `source` holds MiniJinja syntax (an expression, a statement or
/// a comment); without it, rendering prints the source as it is.
pub fn is_template(source: &str) -> bool {
    memchr::memmem::find(source.as_bytes(), b"{{").is_some()
        || memchr::memmem::find(source.as_bytes(), b"{%").is_some()
        || memchr::memmem::find(source.as_bytes(), b"{#").is_some()
}

impl Templates {
    /// Compiles every `(name, source)`; names are the request's field
    /// paths (`content.subject`) and appear in every error.
    pub fn compile(
        dialect: Dialect,
        fields: Vec<(String, String)>,
        bounds: Bounds,
    ) -> Result<Templates, CompileError> {
        let mut env = None;
        let mut sources = BTreeMap::new();
        for (name, source) in fields {
            if dialect == Dialect::Jinja && is_template(&source) {
                check_operators(&name, &source)?;
                env.get_or_insert_with(|| environment(bounds))
                    .add_template_owned(name.clone(), source.clone())
                    .map_err(|e| CompileError(describe(&name, &e)))?;
            }
            sources.insert(name, source);
        }
        Ok(Templates {
            env,
            sources,
            bounds,
        })
    }

    /// Whether `name` prints anything that depends on the recipient.
    pub fn uses_recipient(&self, name: &str) -> bool {
        let Some(env) = &self.env else {
            return false;
        };
        env.get_template(name).is_ok_and(|t| {
            let used = t.undeclared_variables(false);
            ["name", "email", "to_header"]
                .iter()
                .any(|v| used.contains(*v))
        })
    }

    /// A renderer for one message, with its own output budget.
    pub fn message<'t>(
        &'t self,
        global: &Substitutions,
        recipient: Option<&Recipient>,
    ) -> MessageRender<'t> {
        MessageRender {
            templates: self,
            // Variables only when something prints them.
            context: self.env.as_ref().map(|_| context(global, recipient)),
            left: self.bounds.max_output,
        }
    }
}

/// Renders the templates of one message against one recipient's variables.
pub struct MessageRender<'t> {
    templates: &'t Templates,
    context: Option<Value>,
    left: usize,
}

impl MessageRender<'_> {
    /// The rendered template `name` (a field that is not a template comes
    /// back empty).
    pub fn render(&mut self, name: &str) -> Result<String, RenderError> {
        let templates = self.templates;
        let compiled = templates.env.as_ref().zip(self.context.as_ref());
        let Some((template, context)) =
            compiled.and_then(|(env, context)| Some((env.get_template(name).ok()?, context)))
        else {
            // Static, or plain text: the source as it is.
            let source = templates.sources.get(name).map_or("", String::as_str);
            if source.len() > self.left {
                return Err(RenderError::TooLarge(templates.bounds.max_output));
            }
            self.left -= source.len();
            return Ok(source.to_string());
        };
        let mut sink = Bounded {
            data: Vec::new(),
            left: self.left,
            overflow: false,
        };
        ALLOC_BUDGET.with(|budget| budget.set(templates.bounds.max_output));
        let result = template.render_captured_to(context, &mut sink);
        ALLOC_BUDGET.with(|budget| budget.set(0));
        if sink.overflow {
            return Err(RenderError::TooLarge(templates.bounds.max_output));
        }
        result.map_err(|e| RenderError::Failed(describe(name, &e)))?;
        self.left = sink.left;
        String::from_utf8(sink.data)
            .map_err(|_| RenderError::Failed(format!("{name}: the output is not UTF-8")))
    }
}

/// A writer that refuses to hold more than `left` bytes.
struct Bounded {
    data: Vec<u8>,
    left: usize,
    overflow: bool,
}

impl Write for &mut Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.left {
            self.overflow = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.left -= buf.len();
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `field line N: message` from a MiniJinja error.
fn describe(name: &str, error: &Error) -> String {
    let line = error
        .line()
        .map(|l| format!(" line {l}"))
        .unwrap_or_default();
    let what = match error.kind() {
        ErrorKind::UndefinedError => "undefined value".to_string(),
        ErrorKind::OutOfFuel => "the template ran out of fuel (too many steps)".to_string(),
        kind => kind.to_string(),
    };
    match error.detail() {
        Some(detail) => format!("{name}{line}: {what}: {detail}"),
        None => format!("{name}{line}: {what}"),
    }
}

/// The variables of one recipient: global, then its own, then `name`,
/// `email` and `to_header`.
fn context(global: &Substitutions, recipient: Option<&Recipient>) -> Value {
    let mut vars: BTreeMap<String, Value> = global
        .iter()
        .map(|(k, v)| (k.clone(), Value::from_serialize(v)))
        .collect();
    if let Some(recipient) = recipient {
        for (k, v) in &recipient.substitutions {
            vars.insert(k.clone(), Value::from_serialize(v));
        }
        let name = recipient.name.clone().unwrap_or_default();
        if recipient.name.is_some() || !vars.contains_key("name") {
            vars.insert("name".into(), Value::from(name));
        }
        vars.insert("email".into(), Value::from(recipient.email.clone()));
        vars.insert("to_header".into(), Value::from(to_header(recipient)));
    }
    Value::from(vars)
}

/// `"Name" <email>` or `email`, for a `To:` written by a template.
pub fn to_header(recipient: &Recipient) -> String {
    match recipient.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => {
            let quoted = name.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{quoted}\" <{}>", recipient.email)
        }
        None => recipient.email.clone(),
    }
}

/// Refuses `*`, `**` and `~`: the only operators that build a string
/// larger than their operands without a filter to charge for it.
fn check_operators(name: &str, source: &str) -> Result<(), CompileError> {
    use minijinja::machinery::{tokenize, Token};
    for token in tokenize(source, false, Default::default(), Default::default()) {
        let Ok((token, span)) = token else {
            // The compiler reports syntax errors with its own words.
            return Ok(());
        };
        let op = match token {
            Token::Mul => "*",
            Token::Pow => "**",
            Token::Tilde => "~",
            _ => continue,
        };
        return Err(CompileError(format!(
            "{name} line {}: the `{op}` operator is not available in templates (it could build unbounded strings); use a loop or the join filter",
            span.start_line
        )));
    }
    Ok(())
}

fn environment(bounds: Bounds) -> Environment<'static> {
    let mut env = Environment::empty();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_fuel(Some(bounds.fuel));
    env.set_recursion_limit(64);
    env.set_auto_escape_callback(|name| {
        if name.ends_with("html_body") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env.set_formatter(format_value);
    add_tests(&mut env);
    add_filters(&mut env);
    env.add_function("range", minijinja::functions::range);
    env
}

/// Prints strings, numbers, booleans and none; refuses lists and maps
/// (print their items in a loop) and CR/LF in headers.
fn format_value(out: &mut minijinja::Output, state: &State, value: &Value) -> Result<(), Error> {
    use minijinja::value::ValueKind;
    match value.kind() {
        ValueKind::String
            if is_header(state.name())
                && value.as_str().is_some_and(|s| s.contains(['\r', '\n'])) =>
        {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "a value would put CR or LF into a header",
            ));
        }
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable | ValueKind::Plain => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "a list or map cannot be printed as it is; print its items in a loop or use join",
            ));
        }
        _ => {}
    }
    minijinja::escape_formatter(out, state, value)
}

fn add_tests(env: &mut Environment<'static>) {
    use minijinja::tests;
    env.add_test("defined", tests::is_defined);
    env.add_test("undefined", tests::is_undefined);
    env.add_test("none", tests::is_none);
    env.add_test("number", tests::is_number);
    env.add_test("string", tests::is_string);
    env.add_test("sequence", tests::is_sequence);
    env.add_test("mapping", tests::is_mapping);
    env.add_test("odd", tests::is_odd);
    env.add_test("even", tests::is_even);
    env.add_test("true", tests::is_true);
    env.add_test("false", tests::is_false);
    env.add_test("eq", tests::is_eq);
    env.add_test("ne", tests::is_ne);
    env.add_test("in", tests::is_in);
    env.add_test("startingwith", tests::is_startingwith);
    env.add_test("endingwith", tests::is_endingwith);
}

/// The string of a filter's input: only strings (and numbers), never the
/// printed form of a list, which could be any size.
fn text(value: &Value) -> Result<Arc<str>, Error> {
    use minijinja::value::ValueKind;
    match value.kind() {
        ValueKind::String => Ok(Arc::from(value.as_str().unwrap_or_default())),
        ValueKind::Number | ValueKind::Bool => Ok(Arc::from(value.to_string())),
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            "this filter takes a string",
        )),
    }
}

fn charged(output: String) -> Result<Value, Error> {
    charge(output.len())?;
    Ok(Value::from(output))
}

fn add_filters(env: &mut Environment<'static>) {
    use minijinja::filters;
    env.add_filter("default", filters::default);
    env.add_filter("d", filters::default);
    env.add_filter("length", filters::length);
    env.add_filter("count", filters::length);
    env.add_filter("first", filters::first);
    env.add_filter("last", filters::last);
    env.add_filter("int", filters::int);
    env.add_filter("float", filters::float);
    env.add_filter("abs", filters::abs);
    env.add_filter("round", filters::round);
    env.add_filter("bool", filters::bool);
    env.add_filter("min", filters::min);
    env.add_filter("max", filters::max);
    env.add_filter("upper", |v: &Value| charged(text(v)?.to_uppercase()));
    env.add_filter("lower", |v: &Value| charged(text(v)?.to_lowercase()));
    env.add_filter("trim", |v: &Value| charged(text(v)?.trim().to_string()));
    env.add_filter("capitalize", |v: &Value| {
        let s = text(v)?;
        let mut chars = s.chars();
        let out = match chars.next() {
            Some(first) => first
                .to_uppercase()
                .chain(chars.flat_map(char::to_lowercase))
                .collect(),
            None => String::new(),
        };
        charged(out)
    });
    env.add_filter("title", |v: &Value| {
        let s = text(v)?;
        let mut start = true;
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if start {
                out.extend(c.to_uppercase());
            } else {
                out.extend(c.to_lowercase());
            }
            start = !c.is_alphanumeric();
        }
        charged(out)
    });
    env.add_filter("replace", |v: &Value, from: &Value, to: &Value| {
        let (s, from, to) = (text(v)?, text(from)?, text(to)?);
        let count = if from.is_empty() {
            s.chars().count() + 1
        } else {
            s.matches(&*from).count()
        };
        charge(s.len().saturating_add(count.saturating_mul(to.len())))?;
        Ok(Value::from(s.replace(&*from, &to)))
    });
    env.add_filter("join", |v: &Value, sep: Option<&Value>| {
        let sep = match sep {
            Some(sep) => text(sep)?,
            None => Arc::from(""),
        };
        let mut out = String::new();
        for (i, item) in v.try_iter()?.enumerate() {
            let item = text(&item)?;
            let add = item.len() + if i > 0 { sep.len() } else { 0 };
            charge(add)?;
            if i > 0 {
                out.push_str(&sep);
            }
            out.push_str(&item);
        }
        Ok(Value::from(out))
    });
    env.add_filter("safe", |v: &Value| {
        Ok::<_, Error>(Value::from_safe_string(text(v)?.to_string()))
    });
    env.add_filter("escape", escape_filter);
    env.add_filter("e", escape_filter);
}

fn escape_filter(v: &Value) -> Result<Value, Error> {
    if v.is_safe() {
        return Ok(v.clone());
    }
    let s = text(v)?;
    let out = minijinja::HtmlEscape(&s).to_string();
    charge(out.len())?;
    Ok(Value::from_safe_string(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        fuel: 50_000,
        max_output: 10_000,
    };

    fn subs(json: serde_json::Value) -> Substitutions {
        serde_json::from_value(json).unwrap()
    }

    fn recipient(email: &str, name: Option<&str>, own: serde_json::Value) -> Recipient {
        Recipient {
            email: email.into(),
            name: name.map(String::from),
            substitutions: subs(own),
        }
    }

    /// `source` as the only field, the text body.
    fn body(dialect: Dialect, source: &str, bounds: Bounds) -> Result<Templates, CompileError> {
        Templates::compile(
            dialect,
            vec![("content.text_body".into(), source.into())],
            bounds,
        )
    }

    fn one(source: &str) -> Templates {
        body(Dialect::Jinja, source, BOUNDS).unwrap()
    }

    /// The text body rendered without substitutions or a recipient.
    fn render_alone(t: &Templates) -> Result<String, RenderError> {
        t.message(&Substitutions::new(), None)
            .render("content.text_body")
    }

    #[test]
    fn variables_in_kumomta_order() {
        let t = one(
            "{{ shop }} {{ name }} {{ email }} {{ n }} {% for i in items %}[{{ i }}]{% endfor %}",
        );
        let global = subs(serde_json::json!({"shop": "Acme", "name": "all", "n": 1}));
        let r = recipient(
            "a@x.org",
            Some("Ann"),
            serde_json::json!({"n": 2, "items": [1, "b"]}),
        );
        let out = t
            .message(&global, Some(&r))
            .render("content.text_body")
            .unwrap();
        assert_eq!(out, "Acme Ann a@x.org 2 [1][b]");
        let r = recipient("b@x.org", None, serde_json::json!({"items": []}));
        let out = t
            .message(&global, Some(&r))
            .render("content.text_body")
            .unwrap();
        assert_eq!(out, "Acme all b@x.org 1 ");
    }

    #[test]
    fn undefined_and_syntax_errors_name_field_and_line() {
        let t = one("line one\n{{ missing }}");
        let r = recipient("a@x.org", None, serde_json::json!({}));
        let err = t
            .message(&Substitutions::new(), Some(&r))
            .render("content.text_body");
        let Err(RenderError::Failed(m)) = err else {
            panic!("{err:?}")
        };
        assert!(
            m.starts_with("content.text_body line 2: undefined value"),
            "{m}"
        );
        let err = Templates::compile(
            Dialect::Jinja,
            vec![("content.subject".into(), "ok\n{% if %}".into())],
            BOUNDS,
        )
        .err()
        .unwrap();
        assert!(
            err.0.starts_with("content.subject line 2: syntax error"),
            "{err:?}"
        );
    }

    #[test]
    fn headers_refuse_crlf_and_html_is_escaped() {
        let t = Templates::compile(
            Dialect::Jinja,
            vec![
                ("content.subject".into(), "Hi {{ v }}".into()),
                ("content.html_body".into(), "<p>{{ v }}</p>".into()),
            ],
            BOUNDS,
        )
        .unwrap();
        let global = subs(serde_json::json!({"v": "<b>\r\nBcc: x@y"}));
        let mut m = t.message(&global, None);
        let err = m.render("content.subject").unwrap_err();
        assert!(err.to_string().contains("CR or LF into a header"), "{err}");
        assert_eq!(
            m.render("content.html_body").unwrap(),
            "<p>&lt;b&gt;\r\nBcc: x@y</p>"
        );
    }

    #[test]
    fn output_fuel_and_allocations_are_bounded() {
        let big = "x".repeat(4_000);
        let global = subs(serde_json::json!({"big": big, "l": [big, big, big]}));
        let t = one("{{ big }}{{ big }}{{ big }}");
        let err = t
            .message(&global, None)
            .render("content.text_body")
            .unwrap_err();
        assert_eq!(err, RenderError::TooLarge(10_000));
        let t = one("{% for i in range(100000) %}{% endfor %}");
        let err = t
            .message(&global, None)
            .render("content.text_body")
            .unwrap_err();
        assert!(err.to_string().contains("fuel"), "{err}");
        for source in [
            "{{ big|replace('x', big) }}",
            "{{ l|join(big) }}",
            "{{ big|upper|lower|upper }}",
        ] {
            let err = one(source)
                .message(&global, None)
                .render("content.text_body")
                .unwrap_err();
            assert!(err.to_string().contains("larger than"), "{source}: {err}");
        }
        for source in ["{{ big * 1000 }}", "{{ big ~ big }}", "{{ 2 ** 3 }}"] {
            let err = body(Dialect::Jinja, source, BOUNDS).err().unwrap();
            assert!(
                err.0.contains("operator is not available"),
                "{source}: {err:?}"
            );
        }
        let err = one("{{ l }}")
            .message(&global, None)
            .render("content.text_body")
            .unwrap_err();
        assert!(err.to_string().contains("list or map"), "{err}");
    }

    #[test]
    fn static_is_taken_as_written() {
        let t = body(Dialect::Static, "{{ not a template }}", BOUNDS).unwrap();
        assert_eq!(render_alone(&t).unwrap(), "{{ not a template }}");
    }

    #[test]
    fn plain_text_is_not_compiled_and_prints_itself() {
        let plain = "Dear customer, 2 * 3 ~ 6 }} %} #} {not a tag}\r\n";
        let t = Templates::compile(
            Dialect::Jinja,
            vec![
                ("content.subject".into(), "Hello".into()),
                ("content.text_body".into(), plain.into()),
            ],
            BOUNDS,
        )
        .unwrap();
        assert!(t.env.is_none(), "no field is a template: nothing compiled");
        assert!(!t.uses_recipient("content.text_body"));
        let r = recipient("a@x.org", Some("Ann"), serde_json::json!({}));
        let mut message = t.message(&Substitutions::new(), Some(&r));
        assert!(message.context.is_none(), "no variables built");
        assert_eq!(message.render("content.text_body").unwrap(), plain);
        assert_eq!(message.render("content.subject").unwrap(), "Hello");
        // The output bound still holds for plain text.
        let small = Bounds {
            fuel: 1_000,
            max_output: 8,
        };
        let t = body(Dialect::Jinja, "nine char", small).unwrap();
        assert_eq!(render_alone(&t).unwrap_err(), RenderError::TooLarge(8));
    }

    #[test]
    fn any_tag_makes_a_template() {
        for (source, out) in [
            ("a{{ 1 }}b", "a1b"),
            ("a{% if true %}x{% endif %}b", "axb"),
            ("a{# note #}b", "ab"),
        ] {
            assert!(is_template(source), "{source}");
            let t = Templates::compile(
                Dialect::Jinja,
                vec![
                    ("content.text_body".into(), source.into()),
                    ("content.subject".into(), "plain".into()),
                ],
                BOUNDS,
            )
            .unwrap();
            let mut message = t.message(&Substitutions::new(), None);
            assert_eq!(message.render("content.text_body").unwrap(), out);
            assert_eq!(message.render("content.subject").unwrap(), "plain");
        }
        // A plain field is still checked like no other: `*` only in tags.
        assert!(body(Dialect::Jinja, "{{ 'a' * 3 }}", BOUNDS).is_err());
    }
}
