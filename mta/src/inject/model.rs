//! The JSON of `POST /api/inject/v1`, as KumoMTA and the service define
//! it, read strictly: unknown fields are errors, and every error names the
//! field it is about.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Template variable name to value (any JSON value: loops work over lists).
pub type Substitutions = BTreeMap<String, serde_json::Value>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectRequest {
    pub envelope_sender: String,
    pub recipients: Vec<Recipient>,
    pub content: Content,
    #[serde(default)]
    pub substitutions: Substitutions,
    /// `"Jinja"` (default) or `"Static"` (no templating).
    #[serde(default)]
    pub template_dialect: super::template::Dialect,
}

/// `"user@example.com"` or `{"email", "name", "substitutions"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipient {
    pub email: String,
    pub name: Option<String>,
    pub substitutions: Substitutions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipientObject {
    email: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    substitutions: Substitutions,
}

impl From<String> for Recipient {
    fn from(email: String) -> Self {
        Recipient {
            email,
            name: None,
            substitutions: Substitutions::new(),
        }
    }
}

impl From<RecipientObject> for Recipient {
    fn from(o: RecipientObject) -> Self {
        Recipient {
            email: o.email,
            name: o.name,
            substitutions: o.substitutions,
        }
    }
}

impl<'de> Deserialize<'de> for Recipient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_object::<D, RecipientObject, Recipient>(d, "an address or {\"email\": ...}")
    }
}

/// An RFC 5322 message as a string, or the parts to build one from.
#[derive(Debug)]
pub enum Content {
    Rfc5322(String),
    Builder(Box<Builder>),
}

impl From<String> for Content {
    fn from(text: String) -> Self {
        Content::Rfc5322(text)
    }
}

impl From<Builder> for Content {
    fn from(builder: Builder) -> Self {
        Content::Builder(Box::new(builder))
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_object::<D, Builder, Content>(d, "an RFC 5322 message string or a builder object")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    pub from: Mailbox,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub text_body: Option<String>,
    #[serde(default)]
    pub html_body: Option<String>,
    /// A `text/x-amp-html` part, between the text and the HTML.
    #[serde(default)]
    pub amp_html_body: Option<String>,
    #[serde(default)]
    pub reply_to: Option<Mailbox>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// `"a@b"` or `{"email", "name"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mailbox {
    pub email: String,
    pub name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxObject {
    email: String,
    #[serde(default)]
    name: Option<String>,
}

impl From<String> for Mailbox {
    fn from(email: String) -> Self {
        Mailbox { email, name: None }
    }
}

impl From<MailboxObject> for Mailbox {
    fn from(o: MailboxObject) -> Self {
        Mailbox {
            email: o.email,
            name: o.name,
        }
    }
}

impl<'de> Deserialize<'de> for Mailbox {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_object::<D, MailboxObject, Mailbox>(d, "an address or {\"email\": ...}")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub data: String,
    pub content_type: String,
    #[serde(default)]
    pub content_id: Option<String>,
    #[serde(default)]
    pub file_name: Option<String>,
    /// `data` is base64 (else it is the content as text).
    #[serde(default)]
    pub base64: bool,
}

/// Deserializes `Out` from a string (`From<String>`) or from a map read as
/// `Obj`, keeping field paths in errors.
fn string_or_object<'de, D, Obj, Out>(d: D, expecting: &'static str) -> Result<Out, D::Error>
where
    D: Deserializer<'de>,
    Obj: Deserialize<'de>,
    Out: From<String> + From<Obj>,
{
    struct Either<Obj, Out>(&'static str, PhantomData<(Obj, Out)>);
    impl<'de, Obj, Out> Visitor<'de> for Either<Obj, Out>
    where
        Obj: Deserialize<'de>,
        Out: From<String> + From<Obj>,
    {
        type Value = Out;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Out, E> {
            Ok(Out::from(v.to_string()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Out, E> {
            Ok(Out::from(v))
        }
        fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Out, M::Error> {
            Obj::deserialize(de::value::MapAccessDeserializer::new(map)).map(Out::from)
        }
    }
    d.deserialize_any(Either::<Obj, Out>(expecting, PhantomData))
}

/// `{"success_count", "fail_count", "failed_recipients", "errors"}`.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InjectResponse {
    pub success_count: usize,
    pub fail_count: usize,
    pub failed_recipients: Vec<String>,
    pub errors: Vec<String>,
}

/// `{"error"}`: why a request was refused (400, 401, 413, 422, 503).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InjectError {
    pub error: String,
}

/// Parses a request body; the error names the field (`content.subject:`).
pub fn parse(body: &[u8]) -> Result<InjectRequest, String> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let request: InjectRequest = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path == "?" {
            format!("request body: {inner}")
        } else {
            format!("{path}: {inner}")
        }
    })?;
    json.end().map_err(|e| format!("request body: {e}"))?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_example() {
        let request = parse(
            br#"{
            "envelope_sender": "bounces@yourdomain.com",
            "recipients": ["user@example.com"],
            "content": {
              "from": "sender@yourdomain.com",
              "subject": "Hello",
              "text_body": "Hello from unMTA"
            }}"#,
        )
        .unwrap();
        assert_eq!(request.recipients[0].email, "user@example.com");
        let Content::Builder(builder) = request.content else {
            panic!("builder expected");
        };
        assert_eq!(builder.from.email, "sender@yourdomain.com");
    }

    #[test]
    fn objects_and_substitutions() {
        let request = parse(
            br#"{
            "envelope_sender": "b@yourdomain.com",
            "recipients": [{"email": "a@x.org", "name": "A", "substitutions": {"n": 3, "ok": true}}],
            "content": "Subject: hi\n\nbody",
            "substitutions": {"g": "v"}}"#,
        )
        .unwrap();
        assert_eq!(request.recipients[0].substitutions["n"], 3);
        assert_eq!(request.recipients[0].substitutions["ok"], true);
        assert!(matches!(request.content, Content::Rfc5322(_)));
    }

    #[test]
    fn errors_name_the_field() {
        let err = |body: &str| parse(body.as_bytes()).unwrap_err();
        assert!(err("{").starts_with("request body:"), "{}", err("{"));
        let e = err(r#"{"envelope_sender": "a@b", "content": "x"}"#);
        assert!(e.contains("missing field `recipients`"), "{e}");
        let e = err(r#"{"envelope_sender": "a@b", "recipients": [{"mail": "x"}], "content": "x"}"#);
        assert!(e.starts_with("recipients[0]"), "{e}");
        let e = err(
            r#"{"envelope_sender": "a@b", "recipients": ["x@y"], "content": {"subject": "s"}}"#,
        );
        assert!(e.starts_with("content") && e.contains("`from`"), "{e}");
        let e = err(
            r#"{"envelope_sender": "a@b", "recipients": ["x@y"], "content": {"from": "a@b", "subject": 5}}"#,
        );
        assert!(e.starts_with("content.subject"), "{e}");
        let e = err(
            r#"{"envelope_sender": "a@b", "recipients": ["x@y"], "content": "x", "template_dialect": "Mustache"}"#,
        );
        assert!(e.starts_with("template_dialect"), "{e}");
    }
}
