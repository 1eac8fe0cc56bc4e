//! Reading the two kinds of mail the bounce domain takes: a
//! `multipart/report` with a `message/delivery-status` part (RFC 3464) or a
//! `message/feedback-report` part (ARF, RFC 5965).

use fleet::event::{EnhancedCode, FeedbackReport, Response};
use mail_parser::{MessageParser, MimeHeaders};

pub enum Report {
    /// The per-recipient blocks of a DSN.
    Dsn(Vec<DsnRecipient>),
    Arf(FeedbackReport),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// `Final-Recipient`, the address alone.
    pub recipient: String,
    /// `Action`, lower case: failed, delayed, delivered, relayed, expanded.
    pub action: String,
    /// From `Diagnostic-Code` (reply code and text) and `Status`.
    pub response: Response,
    /// `Remote-MTA`, the host alone.
    pub remote_mta: Option<String>,
}

/// What `data` reports, or why it is neither a DSN nor an ARF report.
pub fn report(data: &[u8]) -> Result<Report, String> {
    let message = MessageParser::default()
        .parse(data)
        .ok_or("not a MIME message")?;
    let ct = message.content_type().ok_or("no Content-Type")?;
    let is_report = ct.ctype().eq_ignore_ascii_case("multipart")
        && ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"));
    if !is_report {
        return Err(format!(
            "Content-Type {}/{} is not multipart/report",
            ct.ctype(),
            ct.subtype().unwrap_or_default()
        ));
    }
    let report_type = ct
        .attribute("report-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for part in message.parts.iter().skip(1) {
        let Some(pct) = part.content_type() else {
            continue;
        };
        if !pct.ctype().eq_ignore_ascii_case("message") {
            continue;
        }
        let subtype = pct.subtype().unwrap_or_default().to_ascii_lowercase();
        let body = String::from_utf8_lossy(part.contents());
        match (report_type.as_str(), subtype.as_str()) {
            ("delivery-status", "delivery-status" | "global-delivery-status") => {
                return dsn(&body).map(Report::Dsn)
            }
            ("feedback-report", "feedback-report") => return arf(&body).map(Report::Arf),
            _ => {}
        }
    }
    Err(format!(
        "a multipart/report (report-type={report_type}) without a delivery-status or feedback-report part"
    ))
}

/// The blocks of `text` (separated by blank lines), each as its fields
/// with lower-case names and unfolded values.
fn blocks(text: &str) -> Vec<Vec<(String, String)>> {
    let mut blocks: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if blocks.last().is_some_and(|b| !b.is_empty()) {
                blocks.push(Vec::new());
            }
            continue;
        }
        let block = blocks.last_mut().expect("one block at least");
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = block.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            block.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    blocks.retain(|b| !b.is_empty());
    blocks
}

fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `rfc822; <a@b>` → `a@b` (the value after a `type;`, without brackets).
fn typed_value(value: &str) -> String {
    let value = value.split_once(';').map_or(value, |(_, v)| v);
    value
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

fn dsn(body: &str) -> Result<Vec<DsnRecipient>, String> {
    let recipients: Vec<DsnRecipient> = blocks(body)
        .into_iter()
        .filter_map(|block| {
            let recipient = typed_value(field(&block, "final-recipient")?);
            let action = field(&block, "action")
                .unwrap_or("failed")
                .to_ascii_lowercase();
            let status = field(&block, "status").and_then(EnhancedCode::find);
            let diagnostic = field(&block, "diagnostic-code").map(typed_value);
            let mut response = match diagnostic {
                Some(text) => {
                    let code = text.get(..3).and_then(|c| c.parse::<u16>().ok());
                    match code {
                        Some(code) => Response::new(code, text[3..].trim_start_matches(['-', ' '])),
                        None => Response::new(0, text),
                    }
                }
                None => Response::new(
                    0,
                    format!("DSN status {}", field(&block, "status").unwrap_or("?")),
                ),
            };
            if status.is_some() {
                response.enhanced_code = status;
            }
            Some(DsnRecipient {
                recipient,
                action,
                response,
                remote_mta: field(&block, "remote-mta").map(typed_value),
            })
        })
        .collect();
    if recipients.is_empty() {
        return Err("a delivery-status part without a Final-Recipient".into());
    }
    Ok(recipients)
}

fn arf(body: &str) -> Result<FeedbackReport, String> {
    let fields: Vec<(String, String)> = blocks(body).into_iter().flatten().collect();
    let get = |name: &str| field(&fields, name).map(str::to_string);
    let feedback_type = get("feedback-type")
        .ok_or("a feedback-report part without Feedback-Type")?
        .to_ascii_lowercase();
    let address = |name: &str| field(&fields, name).map(typed_value);
    Ok(FeedbackReport {
        feedback_type,
        user_agent: get("user-agent"),
        original_mail_from: address("original-mail-from"),
        original_rcpt_to: address("original-rcpt-to"),
        reporting_mta: field(&fields, "reporting-mta").map(typed_value),
        arrival_date: get("arrival-date"),
    })
}

#[cfg(test)]
mod tests;
