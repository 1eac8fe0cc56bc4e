//! `{{ name }}` substitutions: a recipient's own values first, then the
//! request's. A placeholder with no value stays as it is written. A value
//! that would put CR or LF into a header is refused, so a substitution can
//! never add a header.

use std::borrow::Cow;

use super::model::Substitutions;

/// The values for one message: the recipient's, then the global ones.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub recipient: Option<&'a Substitutions>,
    pub global: &'a Substitutions,
}

impl<'a> Scope<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.recipient
            .and_then(|r| r.get(name))
            .or_else(|| self.global.get(name))
            .map(|v| v.0.as_str())
    }

    /// `template` with every known placeholder replaced.
    pub fn render<'t>(&self, template: &'t str) -> Cow<'t, str> {
        if !template.contains("{{") {
            return Cow::Borrowed(template);
        }
        let mut out = String::with_capacity(template.len() + 64);
        let mut rest = template;
        while let Some(open) = rest.find("{{") {
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                break;
            };
            let name = after[..close].trim();
            out.push_str(&rest[..open]);
            match self.get(name).filter(|_| is_name(name)) {
                Some(value) => out.push_str(value),
                None => out.push_str(&rest[open..open + 2 + close + 2]),
            }
            rest = &after[close + 2..];
        }
        out.push_str(rest);
        Cow::Owned(out)
    }

    /// Renders a header value; `None` when the result would hold CR or LF.
    pub fn render_header<'t>(&self, template: &'t str) -> Option<Cow<'t, str>> {
        let rendered = self.render(template);
        (!rendered.contains(['\r', '\n'])).then_some(rendered)
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::super::model::SubstitutionValue;
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Substitutions {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SubstitutionValue(v.to_string())))
            .collect()
    }

    #[test]
    fn recipient_values_win_and_unknown_stay() {
        let global = vars(&[("name", "all"), ("shop", "Acme")]);
        let own = vars(&[("name", "Ann")]);
        let scope = Scope {
            recipient: Some(&own),
            global: &global,
        };
        assert_eq!(
            scope.render("Hi {{name}} from {{ shop }}, {{unknown}} {{"),
            "Hi Ann from Acme, {{unknown}} {{"
        );
        let scope = Scope {
            recipient: None,
            global: &global,
        };
        assert_eq!(scope.render("{{name}}{{name}}"), "allall");
        assert_eq!(scope.render("no placeholders"), "no placeholders");
    }

    #[test]
    fn header_values_cannot_break_lines() {
        let global = vars(&[("evil", "x\r\nBcc: victim@example.com")]);
        let scope = Scope {
            recipient: None,
            global: &global,
        };
        assert!(scope.render_header("Hello {{evil}}").is_none());
        assert_eq!(
            scope.render("Body {{evil}}"),
            "Body x\r\nBcc: victim@example.com"
        );
    }
}
