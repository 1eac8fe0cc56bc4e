//! Bounce classification: a failure's reply mapped to one of KumoMTA's
//! classes by the rule table in `configs/bounce-rules.toml` (built in, or the
//! file `[events] bounce_rules` names).

use std::path::Path;

use fleet::event::Response;
use serde::Deserialize;

/// The table shipped in `configs/`, used when no other file is named.
pub const BUILT_IN: &str = include_str!("../../../configs/bounce-rules.toml");

/// KumoMTA's classes (`PreDefinedBounceClass`).
pub const CLASSES: [&str; 29] = [
    "InvalidRecipient",
    "DNSFailure",
    "SpamBlock",
    "SpamContent",
    "ProhibitedAttachment",
    "RelayDenied",
    "AutoReply",
    "TransientFailure",
    "Subscribe",
    "Unsubscribe",
    "ChallengeResponse",
    "BadConfiguration",
    "BadConnection",
    "BadDomain",
    "ContentRelated",
    "InactiveMailbox",
    "InvalidSender",
    "MessageExpired",
    "NoAnswerFromHost",
    "PolicyRelated",
    "ProtocolErrors",
    "QuotaIssues",
    "RelayingIssues",
    "RoutingErrors",
    "SpamRelated",
    "VirusRelated",
    "AuthenticationFailed",
    "TooManyRecipients",
    "Uncategorized",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    class: String,
    #[serde(default)]
    text: Vec<String>,
    #[serde(default)]
    codes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<Rule>,
}

impl Classifier {
    /// The table in `file`, or the built-in one.
    pub fn load(file: Option<&Path>) -> Result<Classifier, String> {
        match file {
            None => Self::parse(BUILT_IN, "the built-in bounce-rules.toml"),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Self::parse(&text, &path.display().to_string())
            }
        }
    }

    pub fn parse(text: &str, name: &str) -> Result<Classifier, String> {
        let table: Table = toml::from_str(text).map_err(|e| format!("{name}: {e}"))?;
        for (i, rule) in table.rules.iter().enumerate() {
            if !CLASSES.contains(&rule.class.as_str()) {
                return Err(format!(
                    "{name}: rules[{i}].class: `{}` is not one of KumoMTA's classes ({})",
                    rule.class,
                    CLASSES.join(", ")
                ));
            }
            if rule.text.is_empty() && rule.codes.is_empty() {
                return Err(format!("{name}: rules[{i}] has neither `text` nor `codes`"));
            }
        }
        let rules = table
            .rules
            .into_iter()
            .map(|mut rule| {
                rule.text.iter_mut().for_each(|t| *t = t.to_lowercase());
                rule
            })
            .collect();
        Ok(Classifier { rules })
    }

    /// The class of `response`: the first matching rule's, else `Uncategorized`.
    pub fn classify(&self, response: &Response) -> &str {
        let content = response.content.to_lowercase();
        let code = match (&response.enhanced_code, response.code) {
            (Some(code), _) => code.to_string(),
            (None, 0) => String::new(),
            (None, basic) => format!("{}.", basic / 100),
        };
        self.rules
            .iter()
            .find(|rule| {
                rule.text.iter().any(|t| content.contains(t.as_str()))
                    || rule.codes.iter().any(|c| match c.ends_with('.') {
                        true => code.starts_with(c.as_str()),
                        false => code == *c,
                    })
            })
            .map_or("Uncategorized", |rule| rule.class.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(code: u16, text: &str) -> String {
        let classifier = Classifier::load(None).unwrap();
        classifier.classify(&Response::new(code, text)).to_string()
    }

    #[test]
    fn the_shipped_table_classifies_common_replies() {
        assert_eq!(
            class(550, "5.1.1 <a@b>: Recipient address rejected: User unknown"),
            "InvalidRecipient"
        );
        assert_eq!(class(552, "5.2.2 mailbox full"), "QuotaIssues");
        assert_eq!(
            class(
                554,
                "5.7.1 Service unavailable; client host blocked using zen.spamhaus.org"
            ),
            "SpamBlock"
        );
        assert_eq!(class(550, "5.7.1 Relaying denied"), "RelayDenied");
        assert_eq!(class(421, "4.7.0 Try again later"), "PolicyRelated");
        assert_eq!(
            class(0, "connection refused at 127.6.0.1:25"),
            "BadConnection"
        );
        assert_eq!(
            class(0, "5.1.10 null MX: example.test accepts no mail"),
            "BadDomain"
        );
        assert_eq!(class(451, "4.3.0 local problem"), "TransientFailure");
        assert_eq!(class(550, "something else entirely"), "Uncategorized");
        // 5.1.1 is exact: 5.1.10 is not an invalid recipient.
        assert_eq!(class(550, "5.1.10 no mail here"), "BadDomain");
    }

    #[test]
    fn a_table_with_an_unknown_class_is_refused_with_its_place() {
        let error = Classifier::parse("[[rules]]\nclass = \"Nope\"\ntext = [\"x\"]\n", "r.toml")
            .unwrap_err();
        assert!(error.contains("r.toml: rules[0].class: `Nope`"), "{error}");
        let error = Classifier::parse("[[rules]]\nclass = \"SpamBlock\"\n", "r.toml").unwrap_err();
        assert!(error.contains("neither"), "{error}");
    }
}
